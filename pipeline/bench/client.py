"""One asyncio streaming client for both sides of the throughput gate.

It speaks OpenAI completions streaming (vLLM, trtllm-serve) and Triton's generate_stream (SSE),
records a timestamp per streamed chunk, and counts output tokens from the server (OpenAI
`usage`, Triton `output_token_count`), never by re-tokenizing text.

It is light on purpose (a client's own overhead shows up as TTFT and caps the throughput it can
measure): bytes come through pipeline/bench/http.py with their arrival time, and each event is
read with a few byte searches; `json.loads` runs only where those cannot decide (the usage
message, an error, an unusual shape), and then decides exactly as a full parse would.
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.bench.http import HTTPError, Session


@dataclass
class RequestRecord:
    start: float
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.output_tokens > 0

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first."""
        if self.output_tokens < 2 or not self.chunk_times:
            return None
        return (self.end - self.chunk_times[0]) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]


class Endpoint(Protocol):
    name: str
    base_url: str

    async def stream(self, session: Session, prompt: str, max_tokens: int) -> RequestRecord: ...


class SSE:
    """Splits a body into server-sent events and hands each `data:` payload to `on_data`.

    An event is complete when its blank line arrives, so its time is the arrival time of the
    bytes that completed it. `on_data(payload, t)` returns True to stop reading.
    """

    def __init__(self, on_data: Any) -> None:
        self.on_data = on_data
        self.buf = b""
        self.last = 0.0  # arrival time of the latest bytes: a request's end

    def __call__(self, data: bytes, now: float) -> bool:
        self.last = now
        buf = self.buf + data if self.buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")  # a lone trailing CR waits for its LF
        events = buf.split(b"\n\n")
        self.buf = events.pop()
        for event in events:
            if event.startswith(b"data:") and b"\n" not in event:  # the usual one-line event
                if self.on_data(event[5:].strip(), now):
                    return True
                continue
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and self.on_data(line[5:].strip(), now):
                    return True
        return False


# Inside a JSON string every quote is escaped, so `"key"` followed by a colon only matches a key.
_TEXT = re.compile(rb'"text"\s*:\s*"(.)', re.S)
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')
_COUNT = re.compile(rb'"output_token_count"\s*:\s*(\[\s*)?(\d+)\s*[\],}]')


def openai_event(rec: RequestRecord, payload: bytes, now: float) -> bool:
    """Read one OpenAI completions stream message into `rec`; True when the stream is over."""
    if payload == b"[DONE]":
        return False  # the body ends right after; reading on to its end keeps the connection
    if b'"error"' not in payload and (b'"usage"' not in payload or _USAGE_NULL.search(payload)):
        m = _TEXT.search(payload)
        if m is not None and b'"choices"' in payload and m.group(1) != b'"':
            rec.chunk_times.append(now)
            return False
        if m is None and b'"choices"' in payload and b'"text"' not in payload:
            return False  # e.g. {"choices": []}: no text, no usage
    return openai_message(rec, json.loads(payload), now)


def openai_message(rec: RequestRecord, msg: Any, now: float) -> bool:
    """The same as `openai_event`, from the parsed message (the definition the fast path keeps)."""
    if msg.get("error"):
        rec.error = str(msg["error"])[:200]
        return True
    choices = msg.get("choices") or []
    if choices and choices[0].get("text"):
        rec.chunk_times.append(now)
    usage = msg.get("usage")
    if usage:
        rec.output_tokens = int(usage.get("completion_tokens") or 0)
        rec.prompt_tokens = usage.get("prompt_tokens")
    return False


def triton_event(rec: RequestRecord, payload: bytes, now: float) -> bool:
    """Read one Triton generate_stream message into `rec`; True when the stream must stop."""
    if b'"error"' not in payload:
        m = _COUNT.search(payload)
        if m is not None and payload.count(b'"output_token_count"') == 1:
            count = int(m.group(2))
            if count:
                rec.chunk_times.append(now)
                rec.output_tokens += count
            return False
    return triton_message(rec, json.loads(payload), now)


def triton_message(rec: RequestRecord, msg: Any, now: float) -> bool:
    if "error" in msg:  # Triton reports stream errors inside an HTTP 200
        rec.error = str(msg["error"])[:200]
        return True
    n = msg.get("output_token_count")
    if n is None:
        rec.error = "response lacks output_token_count; cannot count tokens without re-tokenizing"
        return True
    count = int(n[0] if isinstance(n, list) else n)
    if count:
        rec.chunk_times.append(now)
        rec.output_tokens += count
    return False


async def _post(session: Session, url: str, body: dict[str, Any], rec: RequestRecord, on_data: Any) -> None:
    """Stream one request into `rec`, turning every failure into `rec.error`."""
    sse = SSE(on_data)
    try:
        resp = await session.post(url, json.dumps(body).encode(), sse)
        if resp.status != 200:
            rec.error = f"HTTP {resp.status}: {resp.body.decode(errors='replace')[:200]}"
    except (ConnectionError, HTTPError, TimeoutError) as e:
        rec.error = f"{type(e).__name__}: {e}"
    except ValueError as e:  # a message that is not JSON (UnicodeDecodeError is one too)
        rec.error = f"bad stream message: {e}"[:200]
    # the end is when the last bytes came, not when this coroutine got to run again
    rec.end = sse.last if sse.last and rec.error is None else time.perf_counter()


@dataclass
class OpenAIEndpoint:
    base_url: str  # http://host:port (the /v1 part is added)
    model: str
    name: str = "openai"
    ignore_eos: bool = True

    async def stream(self, session: Session, prompt: str, max_tokens: int) -> RequestRecord:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                                "temperature": 0.0, "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        rec = RequestRecord(start=time.perf_counter())
        await _post(session, f"{self.base_url.rstrip('/')}/v1/completions", body, rec,
                    functools.partial(openai_event, rec))
        if rec.error is None and rec.output_tokens == 0:
            rec.error = "no usage in the stream (server must support stream_options.include_usage)"
        return rec


@dataclass
class TritonEndpoint:
    base_url: str  # http://host:port
    model: str
    name: str = "triton"
    ignore_eos: bool = True

    async def stream(self, session: Session, prompt: str, max_tokens: int) -> RequestRecord:
        body: dict[str, Any] = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0.0}
        if self.ignore_eos:
            body["ignore_eos"] = True
        rec = RequestRecord(start=time.perf_counter())
        await _post(session, f"{self.base_url.rstrip('/')}/v2/models/{self.model}/generate_stream", body, rec,
                    functools.partial(triton_event, rec))
        return rec
