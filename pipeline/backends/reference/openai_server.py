"""An OpenAI-compatible completions server over the CPU ReferenceRuntime: the CPU analog of trtllm-serve.

The accuracy gate points lm-evaluation-harness's `local-completions` model at it, once for the
candidate bundle and once for the unquantized source checkpoint, so both sides go through the
same request path. Echo and logprobs follow vLLM's layout, which is what lm-eval's parser reads:
the prompt tokens come first (the first one with `None`), then the generated ones; each
`top_logprobs` entry holds the k most likely tokens and also the actual one.

Prompts run one at a time, on one worker thread: a prompt's tokens and logprobs are then those of
the in-process runtime given that prompt alone, whatever else the request or the server holds.
Streaming goes through the runtime's scheduler (batched with other streams, as serving does).

`python -m pipeline.backends.reference.openai_server (--bundle DIR | --checkpoint DIR) [--activations]
[--host 127.0.0.1] [--port P] [--served-model-name NAME] [--max-batch-size N] [--max-num-tokens N]
[--max-kv-tokens N] [--max-seq-len N]`
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline.backends.reference.openai_protocol import (
    ApiError,
    Choice,
    CompletionRequest,
    Entry,
    choice_json,
    delta_chunk,
    floor_logprob,
    parse_request,
    stable_text,
    top_dict,
    usage_json,
)
from pipeline.backends.reference.runtime import ReferenceRuntime


class Engine:
    """The model work of the server; its methods block and run on one worker thread.

    Each prompt runs alone (a batch of one), so its tokens and logprobs are what the in-process
    runtime gives for that prompt alone: batching even unpadded rows of one length changes float
    rounding on the CPU (the GEMM kernel depends on the row count), and with fake-quantized
    activations that flipped greedy tokens and moved logprobs by more than 1 nat on SmolLM2.
    """

    def __init__(self, rt: ReferenceRuntime) -> None:
        self.rt = rt
        self.vocab = int(rt.model.get_input_embeddings().num_embeddings)
        self._pieces: dict[int, str] = {}
        self._pieces_lock = threading.Lock()

    # ----------------------------------------------------------------- prompts
    def prepare(self, req: CompletionRequest) -> list[Choice]:
        """Tokenize and check lengths before any generation, so a bad prompt is a 400, not a failed batch."""
        choices = []
        for p in req.prompts:
            ids = self.rt.encode(p) if isinstance(p, str) else p
            if not ids:
                raise ApiError("the prompt is empty")
            bad = next((t for t in ids if not 0 <= t < self.vocab), None)
            if bad is not None:
                raise ApiError(f"token id {bad} is out of range for a vocabulary of {self.vocab}")
            if len(ids) + req.max_tokens > self.rt.max_seq_len:
                raise ApiError(f"This model's maximum context length is {self.rt.max_seq_len} tokens. However, you "
                               f"requested {len(ids) + req.max_tokens} tokens ({len(ids)} in the prompt, "
                               f"{req.max_tokens} for the completion).")
            text = p if isinstance(p, str) else self.rt.tokenizer.decode(ids)
            choices.append(Choice(prompt_ids=list(ids), prompt_text=text))
        return choices

    # ----------------------------------------------------------------- non-streamed completions
    def complete(self, req: CompletionRequest, choices: list[Choice]) -> list[Choice]:
        # lm-eval's loglikelihood request: the prompt's forward for its logprobs also gives the token
        greedy_one = req.logprobs is not None and req.max_tokens == 1 and req.temperature == 0
        for c in choices:
            if req.max_tokens > 0 and not greedy_one:
                # generate_batch of one prompt runs it as one batch at once; submit() may batch it
                # with other requests
                c.finish(self.rt.generate_batch([c.prompt_ids], req.sampling())[0])
            if req.logprobs is not None:
                c.logprobs = self._logprobs(req, c, greedy_one)
        return choices

    def _logprobs(self, req: CompletionRequest, c: Choice, greedy_one: bool) -> dict[str, Any]:
        """vLLM's logprobs of a choice.

        The prompt's (with echo) come from a forward of the prompt alone: the rows that
        ReferenceRuntime.score(prompt) gives. The new tokens' come from a forward of the whole
        sequence but its last token; for one new token (lm-eval's case) that is the same forward.
        """
        n_new = 1 if greedy_one else len(c.gen_ids) + c.eos
        prompt_lp: Any = self._forward(c.prompt_ids) if req.echo or n_new == 1 else None
        if greedy_one:
            self._take_greedy(req, c, prompt_lp[-1])
        new_lp = prompt_lp
        if n_new > 1:
            new_lp = self._forward(c.prompt_ids + c.gen_ids[:n_new - 1])
        if c.eos and c.eos_id is None and new_lp is not None:
            # the runtime does not say which EOS id ended the text: the likeliest one there
            c.eos_id = max(sorted(self.rt.eos_ids), key=lambda e: float(new_lp[-1, e]))
        seq = c.prompt_ids + c.gen_ids + ([c.eos_id] if c.eos_id is not None else [])
        n, k = len(c.prompt_ids), req.logprobs or 0
        entries: list[Entry] = []
        if req.echo:
            entries.append((self.piece(seq[0]), None, None))  # nothing predicts the first token
            entries += self._entries(prompt_lp, seq, 1, n, k)
        if n_new:
            entries += self._entries(new_lp, seq, n, len(seq), k)
        tokens = [e[0] for e in entries]
        offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=0))[: len(tokens)]
        return {"tokens": tokens, "token_logprobs": [e[1] for e in entries],
                "top_logprobs": [e[2] for e in entries], "text_offset": offsets}

    def _take_greedy(self, req: CompletionRequest, c: Choice, row: Any) -> None:
        """The one new token, from the row after the prompt: the model's greedy pick, with the
        runtime's stop rules (EOS, stop strings). It comes from a full forward rather than the
        KV-cache prefill; lm-eval drops it anyway.
        """
        tok = int(row.argmax())
        if tok in self.rt.eos_ids and not req.ignore_eos:
            c.eos, c.eos_id, c.finish_reason = True, tok, "stop"
            return
        c.gen_ids = [tok]
        c.text = self.rt.tokenizer.decode([tok], skip_special_tokens=True)
        hit = [c.text.index(s) for s in req.stop if s in c.text]
        if hit:
            c.text, c.finish_reason = c.text[: min(hit)], "stop"

    def _forward(self, ids: list[int]) -> Any:
        """Log-softmax [len(ids), vocab] of each next token: ReferenceRuntime.score plus the row
        after the last token. The same forward call on the same input, so rows[:-1] are score(ids)
        bit for bit (appending a placeholder token to score would change the shape, and so the
        rounding).
        """
        import torch

        with torch.inference_mode():
            logits = self.rt.model(input_ids=torch.tensor([ids])).logits[0].to(torch.float32)
            return torch.log_softmax(logits, dim=-1)

    def _entries(self, lp: Any, seq: list[int], lo: int, hi: int, k: int) -> list[Entry]:
        """(text, logprob, top) of tokens lo..hi-1 of seq; row j-1 of lp predicts token j.

        The logprob and the top values are the very floats of one tensor, so an actual token that
        is the argmax compares equal to max(top.values()), as lm-eval's is_greedy needs.
        """
        import torch

        if hi <= lo:
            return []
        rows = lp[lo - 1:hi - 1]
        chosen = rows.gather(1, torch.tensor(seq[lo:hi]).unsqueeze(1)).squeeze(1).tolist()
        if k > 0:
            vals, ids = torch.topk(rows, min(k, rows.shape[-1]), dim=-1)
            tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), vals.tolist(), strict=True)]
        else:
            tops = [[] for _ in chosen]
        out: list[Entry] = []
        for tok, lp_tok, top in zip(seq[lo:hi], chosen, tops, strict=True):
            actual = floor_logprob(lp_tok)
            best = top_dict([(self.piece(t), floor_logprob(v)) for t, v in top], self.piece(tok), actual)
            out.append((self.piece(tok), actual, best))
        return out

    def piece(self, tok: int) -> str:
        """The text of one token, as vLLM shows it (a lone byte of a multi-byte char decodes to U+FFFD)."""
        with self._pieces_lock:
            s = self._pieces.get(tok)
            if s is None:
                s = self._pieces[tok] = self.rt.tokenizer.decode([tok])
            return s


# ---------------------------------------------------------------------------------------------- HTTP


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e.status, e.message, e.kind)
    except web.HTTPException as e:  # unknown route, wrong method
        return _error(e.status, e.reason or "error", "invalid_request_error")
    except Exception as e:  # one line for the client and the log, never a traceback page
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        print(f"openai server: internal error on {request.path}: {msg}", file=sys.stderr, flush=True)
        return _error(500, msg, "internal_error")


class Server:
    def __init__(self, engine: Engine, served_name: str) -> None:
        self.engine = engine
        self.served_name = served_name
        # one model thread: requests queue instead of splitting two cores between forwards
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-model")
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors], client_max_size=64 * 2**20)
        app.router.add_get("/health", self.health)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.engine.rt.stop()

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(self, _request: web.Request) -> web.Response:
        """The scheduler's state: running and waiting requests, KV reserved, steps, limits."""
        return web.json_response(self.engine.rt.stats())

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.served_name, "object": "model", "created": self.created, "owned_by": "trtbuild",
             "max_model_len": self.engine.rt.max_seq_len}]})

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError("the request body is not valid JSON") from None
        req = parse_request(body, self.served_name)
        choices = await self._run(self.engine.prepare, req)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.served_name}
        if req.stream:
            return await self._stream(request, req, choices, head)
        done = await self._run(self.engine.complete, req, choices)
        return web.json_response({**head, "choices": [choice_json(i, c, req.echo) for i, c in enumerate(done)],
                                  "usage": usage_json(done)})

    async def _stream(self, request: web.Request, req: CompletionRequest, choices: list[Choice],
                      head: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj: dict[str, Any]) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        async def send_text(index: int, text: str) -> None:
            await send({**head, "choices": [delta_chunk(index, text, None)]})

        try:
            # one prompt after another: alone in its batch (when no other stream runs), it gives the
            # tokens of the non-streamed path
            for i, c in enumerate(choices):
                if req.echo:
                    await send({**head, "choices": [delta_chunk(i, c.prompt_text, None)]})
                if req.max_tokens > 0:
                    await self._stream_one(req, c, functools.partial(send_text, i))
                await send({**head, "choices": [delta_chunk(i, "", c.finish_reason)]})
            if req.include_usage:
                await send({**head, "choices": [], "usage": usage_json(choices)})
        except ConnectionResetError:
            return resp  # the client left; _stream_one cancelled its request
        except ApiError as e:  # the status line is sent already: the error goes in the stream
            await send({"error": {"message": e.message, "type": e.kind, "code": e.status}})
        except Exception as e:
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            print(f"openai server: internal error while streaming: {msg}", file=sys.stderr, flush=True)
            await send({"error": {"message": msg, "type": "internal_error", "code": 500}})
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _stream_one(self, req: CompletionRequest, c: Choice, send: Callable[[str], Any]) -> None:
        """Stream one prompt's text; the pieces add up to the non-streamed text exactly.

        The runtime's per-token deltas are not used: a token that completes a multi-byte
        character turns an earlier U+FFFD into the character, and a stop string is cut after its
        first characters were seen. Text that may still change is held back (see _stable).
        """
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[int | None] = asyncio.Queue()

        def on_token(tok: int, _delta: str, _lp: float | None) -> None:  # on the runtime's thread
            loop.call_soon_threadsafe(q.put_nowait, tok)

        fut = self.engine.rt.submit(c.prompt_ids, req.sampling(), on_token=on_token)
        # scheduled after every on_token of this request (same thread, FIFO), so it ends the stream
        fut.add_done_callback(lambda _f: loop.call_soon_threadsafe(q.put_nowait, None))
        ids: list[int] = []
        sent = ""
        try:
            while (tok := await q.get()) is not None:
                ids.append(tok)
                text = stable_text(self.engine.rt.tokenizer.decode(ids, skip_special_tokens=True), req.stop)
                if len(text) > len(sent) and text.startswith(sent):
                    await send(text[len(sent):])
                    sent = text
        except BaseException:
            fut.cancel()  # the client left: the request leaves the batch at the next step, its KV freed
            raise
        try:
            c.finish(fut.result())
        except ValueError as e:
            raise ApiError(str(e)) from None
        if len(c.text) > len(sent) and c.text.startswith(sent):
            await send(c.text[len(sent):])


# ---------------------------------------------------------------------------------------------- loading / main


def load_checkpoint(path: Path, *, max_seq_len: int | None = None,
                    overrides: dict[str, int | None] | None = None) -> ReferenceRuntime:
    """A plain HF checkpoint in float32, as the accuracy stage loads the unquantized baseline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.backends.reference.serve import scheduler_options

    options = scheduler_options({}, overrides=overrides)  # no bundle: flags, environment, defaults
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    return ReferenceRuntime(model, tok, max_seq_len=max_seq_len or min(2048, limit),
                            max_batch_size=options["max_batch_size"], max_num_tokens=options["max_num_tokens"],
                            max_kv_tokens=options["max_kv_tokens"]).start()


def load(args: argparse.Namespace) -> ReferenceRuntime:
    overrides = {"max_batch_size": args.max_batch_size, "max_num_tokens": args.max_num_tokens,
                 "max_kv_tokens": args.max_kv_tokens}
    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint, max_seq_len=args.max_seq_len, overrides=overrides)
    from pipeline.backends.reference.serve import load_runtime

    return load_runtime(args.bundle, activations=args.activations, max_seq_len=args.max_seq_len,
                        overrides=overrides)


async def serve(server: Server, host: str, port: int, what: str) -> None:
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"openai server: model {server.served_name} on http://{host}:{port} ({what})", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipeline.backends.reference.openai_server",
                                 description="OpenAI-compatible completions over the CPU reference runtime")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="a reference bundle directory")
    src.add_argument("--checkpoint", type=Path, help="a plain Hugging Face checkpoint (the unquantized baseline)")
    ap.add_argument("--activations", action="store_true",
                    help="fake-quantize activations and K/V as the engine does (bundles only)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default=None, help="default: the directory's name")
    # the scheduler's limits (default: TRTBUILD_REF_* in the environment, then the bundle's build facts)
    ap.add_argument("--max-batch-size", type=int, default=None, help="most requests in one scheduler step")
    ap.add_argument("--max-num-tokens", type=int, default=None,
                    help="most tokens one step computes: decode tokens + prefill chunk tokens")
    ap.add_argument("--max-kv-tokens", type=int, default=None,
                    help="KV budget: prompt + max_tokens summed over admitted requests")
    ap.add_argument("--max-seq-len", type=int, default=None)
    args = ap.parse_args(argv)
    if args.activations and args.checkpoint is not None:
        ap.error("--activations applies to --bundle only (a plain checkpoint has no quantization scales)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    path = args.bundle if args.bundle is not None else args.checkpoint
    name = args.served_model_name or path.resolve().name
    try:
        rt = load(args)
    except ValueError as e:  # a bad limit (flag, environment or bundle fact): one line, no traceback
        print(f"openai server: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    c = rt.config
    what = (f"{'bundle' if args.bundle is not None else 'checkpoint'} {path}; max_batch_size {c.max_batch_size}, "
            f"max_num_tokens {c.max_num_tokens}, max_kv_tokens {c.max_kv_tokens}")
    asyncio.run(serve(Server(Engine(rt), name), args.host, args.port, what))


if __name__ == "__main__":
    main()
