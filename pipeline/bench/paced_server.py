"""A paced stand-in LLM server: it streams N tokens with a fixed delay per token.

It measures the load generator itself, not a model: with 0 delay it shows the client's ceiling,
with 10 ms/token it shows how much TTFT error the client adds. It speaks OpenAI completions
streaming and Triton generate_stream. `python -m pipeline.bench.paced_server --port P --delay-ms D`.

It is plain asyncio (a Protocol per connection, HTTP/1.1 keep-alive, chunked responses) rather
than aiohttp, for two reasons: it must stay far lighter than the clients it measures, and it
keeps its own TTFT per request from the moment the request's first bytes came off the socket to
the first token's write, which a web framework's handler cannot see. `GET /paced/ttft` returns
those TTFTs in the order the first tokens went out, and each request's (arrival, end) on
time.perf_counter's clock (CLOCK_MONOTONIC, the same in every process here) in the order they
ended; `POST /paced/reset` clears them. A client's TTFT minus this one is what the client and
the loopback add.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from dataclasses import dataclass, field

TOKEN_EVENT = b'data: {"choices": [{"index": 0, "text": " tok"}]}\n\n'
BURST = 16  # with no delay, tokens written per turn of the loop (streams still interleave)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Pacing:
    delay_s: float
    fail_every: int = 0
    slow_factor: float = 1.0
    requests: int = 0
    ttfts: list[float] = field(default_factory=list)  # the server's own TTFT (s), first-token order
    spans: list[tuple[float, float]] = field(default_factory=list)  # (arrival, last write), end order


class _Conn(asyncio.Protocol):
    def __init__(self, pacing: Pacing) -> None:
        self.p = pacing
        self.buf = b""
        self.arrived = 0.0  # when the current request's first bytes came
        self.busy = False
        self.transport: asyncio.Transport | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a TCP server gives one
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if not self.buf and not self.busy:
            self.arrived = time.perf_counter()
        self.buf += data
        self._next()

    def _next(self) -> None:
        """Start the next complete request in the buffer (one at a time: no pipelining)."""
        if self.busy or self.transport is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4:end + 4 + length]
        self.buf = self.buf[end + 4 + length:]
        method, path = [*lines[0].split(" "), "", ""][:2]
        self.busy = True
        asyncio.get_running_loop().create_task(self._serve(method, path, body, self.arrived))

    async def _serve(self, method: str, path: str, body: bytes, arrived: float) -> None:
        try:
            await self._route(method, path, body, arrived)
        finally:
            self.busy = False
            if self.buf:
                self.arrived = time.perf_counter()
                self._next()

    def _json(self, status: int, obj: object) -> None:
        data = json.dumps(obj).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        if self.transport is not None:
            self.transport.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

    async def _route(self, method: str, path: str, body: bytes, arrived: float) -> None:
        path = path.split("?", 1)[0]
        if method == "GET" and path == "/v1/models":  # what `trtbuild bench` lists without --model
            return self._json(200, {"object": "list", "data": [{"id": "paced", "object": "model"}]})
        if method == "POST" and path == "/v2/repository/index":
            return self._json(200, [{"name": "paced", "version": "1", "state": "READY"}])
        if method == "GET" and path == "/paced/ttft":
            return self._json(200, {"ttft_s": self.p.ttfts, "spans": self.p.spans})
        if method == "POST" and path == "/paced/reset":
            self.p.ttfts.clear()
            self.p.spans.clear()
            return self._json(200, {"ttft_s": [], "spans": []})
        triton = path.startswith("/v2/models/") and path.endswith("/generate_stream")
        if method != "POST" or not (triton or path == "/v1/completions"):
            return self._json(404, {"error": f"no route {method} {path}"})
        try:
            req = json.loads(body or b"{}")
            n = int(req.get("max_tokens", 16))
        except (ValueError, TypeError, AttributeError):
            return self._json(400, {"error": "body must be a JSON object with an integer max_tokens"})
        return await self._stream(n, triton, path.split("/")[3] if triton else "", arrived)

    async def _stream(self, n: int, triton: bool, model: str, arrived: float) -> None:
        p = self.p
        p.requests += 1
        tr = self.transport
        if tr is None:
            return
        tr.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        if p.fail_every and p.requests % p.fail_every == 0:
            error = b'{"error": "planted failure"}' if triton else b'{"error": {"message": "planted failure"}}'
            tr.write(_chunk(b"data: " + error + b"\n\n") + b"0\r\n\r\n")
            return
        if triton:
            msg = {"model_name": model, "model_version": "1", "text_output": " tok", "output_token_count": [1]}
            token = _chunk(f"data: {json.dumps(msg)}\n\n".encode())
        else:
            token = _chunk(TOKEN_EVENT)
        delay = p.delay_s * p.slow_factor
        i = 0
        while i < n:
            if delay:
                await asyncio.sleep(delay)
                burst = 1
            else:
                burst = min(BURST, n - i)
                if i:
                    await asyncio.sleep(0)
            if not self.can_write.is_set():
                await self.can_write.wait()
            if self.transport is None:
                return  # the client went away
            tr.write(token * burst)
            if i == 0:
                p.ttfts.append(time.perf_counter() - arrived)
            i += burst
        if not triton:
            usage = {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8}}
            tr.write(_chunk(f"data: {json.dumps(usage)}\n\n".encode()) + _chunk(b"data: [DONE]\n\n"))
        tr.write(b"0\r\n\r\n")
        p.spans.append((arrived, time.perf_counter()))


async def serve(port: int, pacing: Pacing) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(pacing), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--fail-every", type=int, default=0, help="fail every Nth request (tests)")
    ap.add_argument("--slow-factor", type=float, default=1.0, help="multiply the delay (planted slowdown)")
    args = ap.parse_args()
    asyncio.run(serve(args.port, Pacing(args.delay_ms / 1000, fail_every=args.fail_every,
                                        slow_factor=args.slow_factor)))


if __name__ == "__main__":
    main()
