"""A minimal HTTP/1.1 client for streamed POSTs, built on asyncio.Protocol, for the load generator.

Why not aiohttp: a client's overhead shows up as TTFT and as its ceiling. Here each body piece is
handed to a synchronous callback inside `data_received`, with the time taken right there, when
the bytes come off the socket: no StreamReader, no wake-up of a waiting coroutine per read, no
per-read Future. What it does: keep-alive pooling per origin, chunked / Content-Length /
until-close bodies, https through the loop's ssl, one retry when a reused idle connection turns
out closed before any byte came back. What it does not: redirects, compression (it asks for
identity), cookies, proxies: a benchmark endpoint needs none of them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

# (decoded body bytes, perf_counter at their arrival) -> True to stop reading the response
BodySink = Callable[[bytes, float], bool]
HEAD_LIMIT = 64 * 1024


class HTTPError(Exception):
    """The connection failed or the response was not HTTP as expected."""


@dataclass
class Response:
    status: int
    body: bytes  # kept only for a non-200 answer (its first bytes, for the error message)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reset(None, None)

    def _reset(self, sink: BodySink | None, done: asyncio.Future[Response] | None) -> None:
        self.sink, self.done = sink, done
        self.buf = bytearray()
        self.head = True
        self.status = 0
        self.chunked = False
        self.remaining = -1  # Content-Length bytes left; -1: until close (or chunked)
        self.chunk_left = 0  # bytes left of the current chunk plus its CRLF; 0: a size line is next
        self.keep_alive = True
        self.got_bytes = False
        self.error_body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - create_connection gives one
        self.transport = transport

    def send(self, request: bytes, sink: BodySink, done: asyncio.Future[Response]) -> None:
        self._reset(sink, done)
        assert self.transport is not None  # noqa: S101 - only connected Conns are handed out
        self.transport.write(request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is None or self.done.done():
            return
        if not self.head and not self.chunked and self.remaining == -1:
            self._finish()  # a body delimited by the close
        else:
            why = f"{type(exc).__name__}: {exc}" if exc else "server closed the connection"
            self.done.set_exception(HTTPError(f"connection lost mid-response ({why})"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()  # arrival time, before any parsing
        if self.done is None or self.done.done():
            return  # bytes after a response we stopped reading: the connection is dropped anyway
        self.got_bytes = True
        try:
            self._feed(data, now)
        except Exception as e:  # a bad response or a sink's parse error ends this request only
            self._drop()
            if not self.done.done():
                self.done.set_exception(e)

    def _feed(self, data: bytes, now: float) -> None:
        buf = self.buf
        buf += data
        while self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > HEAD_LIMIT:
                    raise HTTPError("response head larger than 64 KiB")
                return
            self._parse_head(bytes(buf[:end]))
            del buf[:end + 4]
        if self.chunked:
            body = self._dechunk(buf)
        elif self.remaining >= 0:
            body = bytes(buf[:self.remaining])
            self.remaining -= len(body)
            buf.clear()
        else:
            body = bytes(buf)
            buf.clear()
        if body:
            if self.status != 200:
                self.error_body += body[:4096 - len(self.error_body)]
            elif self.sink is not None and self.sink(body, now):
                self._drop()  # stopped early: the rest of the response is not read, so no reuse
                self._finish()
                return
        if self.remaining == 0:
            self._finish()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise HTTPError(f"not an HTTP response: {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return  # an interim answer (100 Continue): the real head follows
        self.head = False
        self.status = status
        self.keep_alive = parts[0] != b"HTTP/1.0"
        self.remaining = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value:
                self.chunked = True
            elif name == b"content-length" and value.isdigit():
                self.remaining = int(value)
            elif name == b"connection":
                self.keep_alive = value != b"close"
        if self.chunked:
            self.remaining = -1
        if not self.chunked and self.remaining == -1:
            self.keep_alive = False  # the body ends with the connection

    def _dechunk(self, buf: bytearray) -> bytes:
        """Take every complete chunk's data out of `buf`; sets `remaining` to 0 at the last chunk."""
        data = bytes(buf)
        out = []
        pos, n = 0, len(data)
        while pos < n:
            if self.chunk_left:  # the rest of a chunk that began in an earlier read
                take = min(self.chunk_left, n - pos)
                data_left = self.chunk_left - 2  # its trailing CRLF is not data
                if data_left > 0:
                    out.append(data[pos:pos + min(take, data_left)])
                self.chunk_left -= take
                pos += take
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(data[pos:eol], 16)
            except ValueError:  # a chunk extension (";name=value"), or garbage
                size_text = data[pos:eol].split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise HTTPError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                # the last chunk: "0\r\n", trailer lines (rare), then an empty line
                end = data.find(b"\r\n\r\n", eol)
                if end < 0:
                    break  # not all of it has come yet
                self.remaining = 0
                pos = end + 4
                break
            start = eol + 2
            if start + size + 2 <= n:  # the usual case: the whole chunk is here
                out.append(data[start:start + size])
                pos = start + size + 2
            else:
                self.chunk_left = size + 2
                pos = start
        del buf[:pos]
        return out[0] if len(out) == 1 else b"".join(out)

    def _finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(Response(self.status, bytes(self.error_body)))

    def _drop(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class Session:
    """Keep-alive connections per origin; `post` streams one response into a sink."""

    def __init__(self, *, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c._drop()
        self._idle.clear()

    async def _connect(self, origin: tuple[str, str, int]) -> _Conn:
        scheme, host, port = origin
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Conn, host, port,
                                                   ssl=self._ssl if scheme == "https" else None)
        except OSError as e:
            raise ConnectionError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        return conn

    async def prewarm(self, url: str, n: int) -> None:
        """Have `n` idle connections to `url`'s origin open, so that a measured window starts
        with every stream on a ready connection (a TCP handshake is the client's, not the
        server's time to first token)."""
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        origin = (scheme, parts.hostname or "127.0.0.1", parts.port or (443 if scheme == "https" else 80))
        idle = self._idle.setdefault(origin, [])
        idle[:] = [c for c in idle if not c.closed]
        if n > len(idle):
            async with asyncio.timeout(self.timeout):
                idle += await asyncio.gather(*(self._connect(origin) for _ in range(n - len(idle))))

    async def post(self, url: str, body: bytes, sink: BodySink, *, timeout: float | None = None) -> Response:
        """POST `body` (JSON) to `url`; each piece of a 200 answer's body goes to `sink` as it arrives.

        Raises ConnectionError (cannot connect), HTTPError (bad or broken response) or TimeoutError.
        """
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, host, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                   f"Accept: text/event-stream\r\nAccept-Encoding: identity\r\nContent-Length: {len(body)}"
                   "\r\n\r\n").encode() + body
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            for attempt in (0, 1):
                idle = self._idle.setdefault(origin, [])
                reused = False
                conn = None
                while idle:
                    c = idle.pop()
                    if not c.closed:
                        conn, reused = c, True
                        break
                if conn is None:
                    conn = await self._connect(origin)
                done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
                conn.send(request, sink, done)
                try:
                    resp = await done
                except HTTPError:
                    # a kept-alive connection the server closed while idle: once more on a new one
                    if reused and attempt == 0 and not conn.got_bytes:
                        continue
                    raise
                except BaseException:
                    conn._drop()  # a timeout or cancel mid-response: the connection is unusable
                    raise
                if conn.keep_alive and not conn.closed:
                    idle.append(conn)
                return resp
        raise AssertionError("unreachable")  # pragma: no cover
