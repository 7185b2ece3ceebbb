"""The OpenAI completions protocol of the reference server: request parsing and response shapes.

Field names, defaults and the echo/logprobs layout follow vLLM's /v1/completions, which is what
lm-eval's local-completions model parses; see openai_server.py for the serving side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.backends.reference.runtime import Generation, SamplingParams

# vLLM clamps logprobs to this: -inf is not JSON, and the value stays below any real logprob
LOGPROB_FLOOR = -9999.0
MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs


class ApiError(Exception):
    """An error the client caused (or a missing model): answered as OpenAI-style JSON, never a traceback."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind


# ---------------------------------------------------------------------------------------------- request


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[str | list[int]]
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    echo: bool = False
    logprobs: int | None = None
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=self.seed, stop=self.stop, ignore_eos=self.ignore_eos)


def parse_request(body: Any, served_name: str) -> CompletionRequest:
    """Validate a /v1/completions body. Unknown fields are ignored, as OpenAI servers do."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_name:
        raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError")
    if _opt(body, "n", int, 1) != 1:
        raise ApiError("only n=1 is supported")
    req = CompletionRequest(
        prompts=_prompts(body.get("prompt")),
        max_tokens=_opt(body, "max_tokens", int, 16),
        temperature=float(_opt(body, "temperature", float, 0.0)),
        top_p=float(_opt(body, "top_p", float, 1.0)),
        top_k=max(0, _opt(body, "top_k", int, 0)),  # vLLM spells "off" as -1
        seed=_opt(body, "seed", int, None),
        stop=_stop(body.get("stop")),
        echo=_opt(body, "echo", bool, False),
        logprobs=_opt(body, "logprobs", int, None),
        stream=_opt(body, "stream", bool, False),
        include_usage=_includeusage_json(body.get("stream_options")),
        ignore_eos=_opt(body, "ignore_eos", bool, False),
    )
    _check_ranges(req)
    return req


def _check_ranges(req: CompletionRequest) -> None:
    if req.max_tokens < 0 or (req.max_tokens == 0 and not req.echo):
        raise ApiError("max_tokens must be >= 1 (0 only with echo: prompt logprobs only)")
    if req.logprobs is not None and not 0 <= req.logprobs <= MAX_TOP_LOGPROBS:
        raise ApiError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    if req.stream and req.logprobs is not None:
        raise ApiError("logprobs with stream is not supported by this server")
    if req.seed is not None and not -(2**63) <= req.seed < 2**64:  # what torch.Generator takes
        raise ApiError("'seed' is out of range")
    if req.max_tokens > 0:
        try:
            req.sampling()
        except ValueError as e:
            raise ApiError(str(e)) from None


def _opt(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """A field of one JSON type, or the default when absent or null. bool is not accepted as a number."""
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ApiError(f"'{key}' must be {'a number' if kind is float else 'an ' + kind.__name__}, "
                       f"got {json.dumps(value)[:40]}")
    if kind is float and not math.isfinite(value):
        raise ApiError(f"'{key}' must be finite")
    return value


def _prompts(prompt: Any) -> list[str | list[int]]:
    """str, list[str], list[int] (one tokenized prompt) or list[list[int]] (lm-eval's batches)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_token(t) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and all(_is_token(t) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise ApiError("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists")


def _is_token(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(s for s in stop if s)
    raise ApiError("'stop' must be a string or a list of strings")


def _includeusage_json(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError("'stream_options' must be an object")
    return bool(options.get("include_usage", False))


# ---------------------------------------------------------------------------------------------- engine


@dataclass
class Choice:
    prompt_ids: list[int]
    prompt_text: str
    gen_ids: list[int] = field(default_factory=list)  # without the EOS token
    eos: bool = False  # an EOS token ended it: counted and shown in logprobs, as vLLM does
    eos_id: int | None = None  # known once scored
    text: str = ""
    finish_reason: str = "length"
    logprobs: dict[str, Any] | None = None

    def finish(self, g: Generation) -> None:
        self.gen_ids, self.text, self.eos = list(g.token_ids), g.text, g.finish_reason == "eos"
        self.finish_reason = "length" if g.finish_reason == "length" else "stop"

    def completion_tokens(self) -> int:
        return len(self.gen_ids) + self.eos


# one token of a logprobs answer: its text, its logprob, the top ones (None for the first prompt token)
Entry = tuple[str, float | None, dict[str, float] | None]


def top_dict(top: Sequence[tuple[str, float]], actual: str, actual_lp: float) -> dict[str, float]:
    """k best as {text: logprob} plus the actual token. Two ids may decode to one text: keep the max.

    lm-eval calls a token greedy when its logprob equals max(top.values()); with the max kept,
    the actual token's entry never hides a better token and never disappears.
    """
    out: dict[str, float] = {}
    for text, v in [*top, (actual, actual_lp)]:
        out[text] = max(out.get(text, -math.inf), v)
    return out


def floor_logprob(v: float) -> float:
    return max(v, LOGPROB_FLOOR)


def stable_text(text: str, stops: Sequence[str]) -> str:
    """The part of a growing text that later tokens cannot change.

    A trailing U+FFFD may be the first bytes of a character, and a suffix that begins a stop
    string may become one (the runtime then cuts the text at the stop string).
    """
    cut = min((text.index(s) for s in stops if s in text), default=len(text))
    text = text[:cut].rstrip("\ufffd")
    hold = max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    return text[: len(text) - hold]


def delta_chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def choice_json(index: int, c: Choice, echo: bool) -> dict[str, Any]:
    text = c.prompt_text + c.text if echo else c.text
    return {"index": index, "text": text, "logprobs": c.logprobs, "finish_reason": c.finish_reason}


def usage_json(choices: Sequence[Choice]) -> dict[str, int]:
    p = sum(len(c.prompt_ids) for c in choices)
    g = sum(c.completion_tokens() for c in choices)
    return {"prompt_tokens": p, "completion_tokens": g, "total_tokens": p + g}
