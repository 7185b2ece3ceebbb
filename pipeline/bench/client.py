"""One asyncio streaming client for both sides of the throughput gate.

It speaks OpenAI completions streaming (vLLM, trtllm-serve) and Triton's generate_stream (SSE),
records a timestamp per streamed chunk, and counts output tokens from the server (OpenAI
`usage`, Triton `output_token_count`), never by re-tokenizing text.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp


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

    async def stream(self, session: aiohttp.ClientSession, prompt: str, max_tokens: int) -> RequestRecord: ...


async def _sse(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """Yield the data payload of each server-sent event."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip().decode()


@dataclass
class OpenAIEndpoint:
    base_url: str  # http://host:port (the /v1 part is added)
    model: str
    name: str = "openai"
    ignore_eos: bool = True

    async def stream(self, session: aiohttp.ClientSession, prompt: str, max_tokens: int) -> RequestRecord:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                                "temperature": 0.0, "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        rec = RequestRecord(start=time.perf_counter())
        try:
            async with session.post(f"{self.base_url.rstrip('/')}/v1/completions", json=body) as resp:
                if resp.status != 200:
                    rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return rec
                async for data in _sse(resp):
                    if data == "[DONE]":
                        break
                    msg = json.loads(data)
                    if msg.get("error"):
                        rec.error = str(msg["error"])[:200]
                        break
                    choices = msg.get("choices") or []
                    if choices and choices[0].get("text"):
                        rec.chunk_times.append(time.perf_counter())
                    usage = msg.get("usage")
                    if usage:
                        rec.output_tokens = int(usage.get("completion_tokens") or 0)
                        rec.prompt_tokens = usage.get("prompt_tokens")
        except (aiohttp.ClientError, TimeoutError) as e:
            rec.error = f"{type(e).__name__}: {e}"
        rec.end = time.perf_counter()
        if rec.error is None and rec.output_tokens == 0:
            rec.error = "no usage in the stream (server must support stream_options.include_usage)"
        return rec


@dataclass
class TritonEndpoint:
    base_url: str  # http://host:port
    model: str
    name: str = "triton"
    ignore_eos: bool = True

    async def stream(self, session: aiohttp.ClientSession, prompt: str, max_tokens: int) -> RequestRecord:
        body = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0.0}
        if self.ignore_eos:
            body["ignore_eos"] = True
        rec = RequestRecord(start=time.perf_counter())
        url = f"{self.base_url.rstrip('/')}/v2/models/{self.model}/generate_stream"
        try:
            async with session.post(url, json=body) as resp:
                if resp.status != 200:
                    rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return rec
                async for data in _sse(resp):
                    msg = json.loads(data)
                    if "error" in msg:  # Triton reports stream errors inside an HTTP 200
                        rec.error = str(msg["error"])[:200]
                        break
                    n = msg.get("output_token_count")
                    if n is None:
                        rec.error = "response lacks output_token_count; cannot count tokens without re-tokenizing"
                        break
                    count = int(n[0] if isinstance(n, list) else n)
                    if count:
                        rec.chunk_times.append(time.perf_counter())
                        rec.output_tokens += count
        except (aiohttp.ClientError, TimeoutError) as e:
            rec.error = f"{type(e).__name__}: {e}"
        rec.end = time.perf_counter()
        return rec
