"""The CPU reference runtime: in-flight batching with a KV cache, streaming, logprobs.

It serves unified checkpoints dequantized by `pipeline.quant.loader` so the whole pipeline runs
without an NVIDIA GPU. It is not a production engine, but it schedules like one (TensorRT-LLM's
in-flight batching, see scheduler.py): a scheduler thread runs one step after another; each step
decodes one token for every running request and prefills chunks of newly admitted prompts within
a token budget (`max_num_tokens`). Requests join at every step while `max_batch_size` and the KV
budget (`max_kv_tokens`) allow, and leave as soon as they finish, their KV freed. A prompt
prefills alone (its own cache); its cache then joins the left-padded decode batch (kvbatch.py).

Greedy outputs equal a request run alone except where a batch's shape changes float rounding
(CPU GEMM kernels are picked by row count, padding changes the attention sums): README
"In-flight batching" gives the measured rate on the shipped prompts.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.backends.reference.kvbatch import BatchKV
from pipeline.backends.reference.pacing import StepClock, StepPacing
from pipeline.backends.reference.scheduler import Capacity, SchedulerConfig, StepRecord, admit, plan

TokenCallback = Callable[[int, str, float | None], None]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature >= 0, 0 < top_p <= 1 and top_k >= 0 are required")


@dataclass
class Generation:
    prompt_tokens: int
    token_ids: list[int]
    text: str
    finish_reason: str  # "length" | "stop" | "eos"
    logprobs: list[float] | None = None
    ttft_s: float = 0.0
    seconds: float = 0.0


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_token: TokenCallback | None
    future: Future[Generation]
    created: float = field(default_factory=time.monotonic)
    out: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    first_token_at: float | None = None
    generator: torch.Generator | None = None
    kv_need: int = 0  # KV tokens reserved at admission: prompt + max_tokens
    prefilled: int = 0  # prompt tokens already in the cache (chunked prefill)
    cache: Any = None  # the request's own cache while it prefills; then it joins the batch's
    next_id: int = 0  # the token the next decode step feeds


class ReferenceRuntime:
    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 8, max_seq_len: int = 2048,
                 max_num_tokens: int = 8192, max_kv_tokens: int = 0, dtype: torch.dtype = torch.float32,
                 pacing: StepPacing | None = None) -> None:
        self.model = model.eval()
        # test-only hooks (see pacing.py); None or inactive costs nothing per step
        self.pacing = pacing if pacing is not None and pacing.active else None
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.config = SchedulerConfig(max_batch_size, max_num_tokens, max_kv_tokens).check(max_seq_len)
        self.dtype = dtype
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            next(iter(self.eos_ids)) if self.eos_ids else 0)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._exec_lock = threading.Lock()  # one forward at a time: a scheduler step or generate_batch
        # scheduler state, touched by the scheduler thread only
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []  # admitted, in admission order
        self._decoding: list[_Request] = []  # the rows of self.kv, in row order
        self.kv = BatchKV()
        self.capacity = Capacity(self.config.max_kv_tokens)
        self._clock: StepClock | None = None
        self.steps: deque[StepRecord] = deque(maxlen=100_000)  # the latest steps (tests check the limits)
        self.step_count = 0
        self.batches = 0  # generate_batch's batches (tests check that prompts of one length share one)

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def max_num_tokens(self) -> int:
        return self.config.max_num_tokens

    # ------------------------------------------------------------------ public API
    def start(self) -> ReferenceRuntime:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="reference-runtime", daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
               on_token: TokenCallback | None = None) -> Future[Generation]:
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        params = params or SamplingParams()
        fut: Future[Generation] = Future()
        if not ids:
            fut.set_exception(ValueError("empty prompt"))
            return fut
        if len(ids) + params.max_tokens > self.max_seq_len:
            fut.set_exception(ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                                         f"max_seq_len {self.max_seq_len}"))
            return fut
        need = len(ids) + params.max_tokens
        if need > self.config.max_kv_tokens:
            fut.set_exception(ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                                         f"the KV budget max_kv_tokens {self.config.max_kv_tokens}"))
            return fut
        req = _Request(ids, params, on_token, fut, kv_need=need)
        if params.seed is not None:
            req.generator = torch.Generator().manual_seed(params.seed)
        self.start()
        self._queue.put(req)
        return fut

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                 on_token: TokenCallback | None = None, timeout: float | None = None) -> Generation:
        return self.submit(prompt, params, on_token).result(timeout=timeout)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    @torch.inference_mode()
    def score(self, ids: Sequence[int]) -> torch.Tensor:
        """Teacher-forced log-probabilities [len(ids)-1, vocab] of each next token (accuracy gate)."""
        x = torch.tensor([list(ids)])
        logits = self.model(input_ids=x).logits[0, :-1].to(torch.float32)
        return torch.log_softmax(logits, dim=-1)

    @torch.inference_mode()
    def score_batch(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """`score` for several sequences of one length in one forward: [len(seqs), len-1, vocab].

        Equal lengths only: rows then need no padding or mask, and each row's result has the same
        bits as `score` of that row alone (padding changes float rounding, see generate_batch).
        """
        if len({len(s) for s in seqs}) != 1:
            raise ValueError("score_batch needs one or more sequences of one length")
        x = torch.tensor([list(s) for s in seqs])
        logits = self.model(input_ids=x).logits[:, :-1].to(torch.float32)
        return torch.log_softmax(logits, dim=-1)

    def generate_batch(self, prompts: Sequence[str | Sequence[int]],
                       params: SamplingParams | None = None) -> list[Generation]:
        """Generate for many prompts at once, in order; for offline evaluation (the accuracy gate).

        Prompts of one token length share a batch (up to max_batch_size), so no row is padded:
        left padding and its attention mask change float rounding in the other rows' sums, and
        with FP8 activation emulation such a difference can cross a rounding edge and change a
        greedy token. Unpadded rows avoid that; they are not bit-exact in every case: CPU matmul
        kernels are chosen by row count, so once rows finish at different steps a decode can pick
        another token (seen after the answer line on SmolLM2 FP8, never in a scored answer so far).
        Each row stops on its own (EOS, stop, max_tokens), as in serving.
        """
        params = params or SamplingParams()
        ids = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        for i in ids:
            if not i or len(i) + params.max_tokens > self.max_seq_len:
                raise ValueError(f"prompt of {len(i)} tokens + max_tokens {params.max_tokens}: empty or over "
                                 f"max_seq_len {self.max_seq_len}")
        reqs = [_Request(i, params, None, Future()) for i in ids]
        for r in reqs:
            if params.seed is not None:
                r.generator = torch.Generator().manual_seed(params.seed)
        by_len: dict[int, list[_Request]] = {}
        for r in reqs:
            by_len.setdefault(len(r.prompt_ids), []).append(r)
        for group in by_len.values():
            for k in range(0, len(group), self.max_batch_size):
                with self._exec_lock:  # the scheduler thread may be serving submit()ted work
                    self._run_offline(group[k:k + self.max_batch_size])
        return [r.future.result() for r in reqs]

    # ------------------------------------------------------------------ in-flight scheduler
    def _loop(self) -> None:
        stopping = False
        while True:
            if not self._running and not self._waiting:
                if stopping:
                    return
                first = self._queue.get()  # idle: sleep until work comes
                if first is None:
                    return
                self._waiting.append(first)
            while True:  # whatever arrived since the last step joins this one
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True  # finish what was submitted before stop(), then return
                else:
                    self._waiting.append(nxt)
            try:
                with self._exec_lock:
                    self._step()
            except Exception as e:  # a failed step fails the requests in it, never the server
                self._fail_running(e)

    @torch.inference_mode()
    def _step(self) -> None:
        """One scheduler step: admit, decode every running row, prefill chunks, emit, release."""
        self._drop_cancelled()
        n = admit(deque(r.kv_need for r in self._waiting), len(self._running), self.config, self.capacity)
        for _ in range(n):
            self._running.append(self._waiting.popleft())
        if not self._running:
            return
        if self.pacing is not None and self._clock is None:
            self._clock = self.pacing.clock()  # a busy period's steps follow one clock
        decoding = self._decoding
        prefilling = [r for r in self._running if r.prefilled < len(r.prompt_ids)]
        step = plan(len(decoding), [len(r.prompt_ids) - r.prefilled for r in prefilling], self.config)
        logits = self.kv.decode(self.model, [r.next_id for r in decoding]) if decoding else None
        ready: list[tuple[_Request, torch.Tensor]] = []
        for i, chunk in step.prefill:
            r = prefilling[i]
            ids = r.prompt_ids[r.prefilled:r.prefilled + chunk]
            out = self.model(input_ids=torch.tensor([ids]),
                             position_ids=torch.arange(r.prefilled, r.prefilled + chunk).unsqueeze(0),
                             past_key_values=r.cache, use_cache=True,
                             logits_to_keep=1)  # the vocab projection of the last position only
            r.cache = out.past_key_values
            r.prefilled += chunk
            if r.prefilled == len(r.prompt_ids):
                ready.append((r, out.logits[0, -1, :].to(torch.float32)))
        self.steps.append(StepRecord(batch=step.batch, decode_tokens=step.decode,
                                     prefill_tokens=step.tokens - step.decode, running=len(self._running),
                                     kv_reserved=self.capacity.reserved))
        self.step_count += 1
        if self._clock is not None:  # before the step's tokens are sent: the client sees the stretched step
            self._clock.tick()
        keep = []
        for row, r in enumerate(decoding):
            if self._advance(r, logits[row] if logits is not None else None):
                keep.append(row)
        self.kv.keep(keep)
        self._decoding = [decoding[k] for k in keep]
        for r, last in ready:
            if self._advance(r, last):  # its first token; from the next step it decodes with the others
                self.kv.add(r.cache, len(r.prompt_ids))
                self._decoding.append(r)
            r.cache = None
        if not self._running:
            self._clock = None

    def _advance(self, r: _Request, logits: torch.Tensor | None) -> bool:
        """Sample and emit a running request's next token; release it when it is done."""
        assert logits is not None  # noqa: S101 - a decoding row always has logits
        tok, lp = self._sample(logits, r)
        if not r.future.cancelled() and self._emit(r, tok, lp):
            r.next_id = tok
            return True
        self._release(r)
        return False

    def _release(self, r: _Request) -> None:
        self._running.remove(r)
        self.capacity.give_back(r.kv_need)
        r.cache = None

    def _drop_cancelled(self) -> None:
        """Requests whose future was cancelled leave before the step: their rows and KV are freed."""
        self._waiting = deque(r for r in self._waiting if not r.future.cancelled())
        gone = [r for r in self._running if r.future.cancelled()]
        if not gone:
            return
        rows = [i for i, r in enumerate(self._decoding) if not r.future.cancelled()]
        self.kv.keep(rows)
        self._decoding = [self._decoding[i] for i in rows]
        for r in gone:
            self._release(r)

    def _fail_running(self, e: Exception) -> None:
        for r in list(self._running):
            self._release(r)
            if not r.future.done():
                r.future.set_exception(e)
        self._decoding = []
        self.kv = BatchKV()
        self._clock = None

    def stats(self) -> dict[str, int]:
        """The scheduler's state between steps (the servers report it; tests read it)."""
        with self._exec_lock:  # not halfway through a step, where a finished row may still be in the batch
            return {"running": len(self._running), "waiting": len(self._waiting) + self._queue.qsize(),
                    "kv_reserved_tokens": self.capacity.reserved, "max_kv_tokens": self.config.max_kv_tokens,
                    "kv_cache_slots": self.kv.slots(), "steps": self.step_count,
                    "max_batch_size": self.config.max_batch_size, "max_num_tokens": self.config.max_num_tokens}

    @torch.inference_mode()
    def _run_offline(self, batch: list[_Request]) -> None:
        """generate_batch's path: prompts of one length as one unpadded batch, decoded to the end."""
        self.batches += 1
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].to(torch.float32)
        active = list(range(len(batch)))
        while True:
            keep: list[int] = []
            next_ids: list[int] = []
            for row, idx in enumerate(active):
                r = batch[idx]
                tok, lp = self._sample(logits[row], r)
                if self._emit(r, tok, lp):
                    keep.append(row)
                    next_ids.append(tok)
            if not keep:
                return
            if len(keep) != len(active):
                cache.batch_select_indices(torch.tensor(keep))
                mask = mask[keep]
                positions = positions[keep]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=torch.tensor(next_ids).unsqueeze(1), attention_mask=mask,
                             position_ids=positions, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].to(torch.float32)

    def _sample(self, logits: torch.Tensor, r: _Request) -> tuple[int, float | None]:
        p = r.params
        logprobs = torch.log_softmax(logits, dim=-1)
        if p.temperature == 0:
            tok = int(torch.argmax(logits))
        else:
            scaled = logits / p.temperature
            if p.top_k > 0:
                kth = torch.topk(scaled, min(p.top_k, scaled.numel())).values[-1]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            if p.top_p < 1.0:
                sorted_logits, order = torch.sort(scaled, descending=True)
                cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
                drop = cum - torch.softmax(sorted_logits, dim=-1) > p.top_p
                sorted_logits[drop] = float("-inf")
                scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
            probs = torch.softmax(scaled, dim=-1)
            tok = int(torch.multinomial(probs, 1, generator=r.generator))
        return tok, float(logprobs[tok]) if p.logprobs else None

    def _emit(self, r: _Request, tok: int, lp: float | None) -> bool:
        """Record a token, stream it, and say whether the request goes on."""
        p = r.params
        now = time.monotonic()
        if r.first_token_at is None:
            r.first_token_at = now
        is_eos = tok in self.eos_ids and not p.ignore_eos
        if is_eos or tok in p.stop_token_ids:
            self._finish(r, "eos" if is_eos else "stop")
            return False
        r.out.append(tok)
        if lp is not None:
            r.logprobs.append(lp)
        text = self.tokenizer.decode(r.out, skip_special_tokens=True)
        delta = text[len(r.text):] if text.startswith(r.text) else text
        r.text = text
        for s in p.stop:
            if s and s in r.text:
                r.text = r.text[: r.text.index(s)]
                self._callback(r, tok, delta[: max(0, len(delta) - (len(text) - len(r.text)))], lp)
                self._finish(r, "stop")
                return False
        if not self._callback(r, tok, delta, lp):
            return False
        if len(r.out) >= p.max_tokens:
            self._finish(r, "length")
            return False
        return True

    def _callback(self, r: _Request, tok: int, delta: str, lp: float | None) -> bool:
        """Stream a token; a callback that raises (a client gone) fails its own request only."""
        if r.on_token is None:
            return True
        try:
            r.on_token(tok, delta, lp)
        except Exception as e:
            if not r.future.done():
                r.future.set_exception(e)
            return False
        return True

    def _finish(self, r: _Request, reason: str) -> None:
        if r.future.done():  # cancelled by its caller, or failed by its callback
            return
        now = time.monotonic()
        r.future.set_result(Generation(
            prompt_tokens=len(r.prompt_ids), token_ids=list(r.out), text=r.text, finish_reason=reason,
            logprobs=list(r.logprobs) if r.params.logprobs else None,
            ttft_s=(r.first_token_at or now) - r.created, seconds=now - r.created))


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(src, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
