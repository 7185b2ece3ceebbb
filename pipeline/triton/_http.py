"""Bounded HTTP/1.1 for Triton: every call has a timeout and closes its connection.

http.client rather than a session pool on purpose: an idle keep-alive connection to Triton
delays its shutdown, and a pool hides which call is waiting on what.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit


class HTTPTimeoutError(TimeoutError):
    """No answer within the timeout."""


class HTTPUnreachableError(ConnectionError):
    """The server could not be reached or dropped the connection."""


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected an http:// URL, got {url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return conn, path


def request(method: str, url: str, *, body: Any = None, timeout: float) -> tuple[int, bytes]:
    """(status, body bytes). `body` is sent as JSON unless it is bytes.

    Each socket operation waits at most `timeout` seconds; a server that accepts the request
    and then never answers raises HTTPTimeoutError after `timeout`.
    """
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn, path = _connection(url, timeout)
    try:
        conn.request(method, path, body=data, headers=_headers(data))
        resp = conn.getresponse()
        return resp.status, resp.read()
    except TimeoutError as e:
        raise HTTPTimeoutError(f"{method} {url}: no answer in {timeout:g}s") from e
    except (OSError, http.client.HTTPException) as e:
        raise HTTPUnreachableError(f"{method} {url}: {e}") from e
    finally:
        conn.close()


def stream_lines(url: str, *, body: Any, timeout: float, read_timeout: float) -> Iterator[bytes]:
    """POST `body` and yield the response's lines as they arrive (SSE), without line endings.

    Raises HTTPTimeoutError when no byte arrives for `read_timeout` seconds or the whole exchange
    exceeds `timeout`; a non-200 status raises HTTPStatusError with the body.
    """
    deadline = time.monotonic() + timeout
    data = json.dumps(body).encode()
    conn, path = _connection(url, min(timeout, read_timeout))
    try:
        try:
            conn.request("POST", path, body=data, headers=_headers(data))
            resp = conn.getresponse()
            if resp.status != 200:
                raise HTTPStatusError(resp.status, resp.read())
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HTTPTimeoutError(f"POST {url}: stream not finished after {timeout:g}s")
                if conn.sock is not None:
                    conn.sock.settimeout(min(read_timeout, remaining))
                line = resp.readline()
                if not line:
                    return
                yield line.rstrip(b"\r\n")
        except TimeoutError as e:
            raise HTTPTimeoutError(f"POST {url}: no data for {read_timeout:g}s") from e
        except (OSError, http.client.HTTPException) as e:
            raise HTTPUnreachableError(f"POST {url}: {e}") from e
    finally:
        conn.close()


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {error_message(body)}")


def error_message(body: bytes) -> str:
    """Triton's `{"error": "..."}` message, else the body text."""
    text = body.decode(errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(obj, dict) and "error" in obj:
        return str(obj["error"])
    return text[:500]


def _headers(data: bytes | None) -> dict[str, str]:
    h = {"Connection": "close"}
    if data is not None:
        h["Content-Type"] = "application/json"
    return h
