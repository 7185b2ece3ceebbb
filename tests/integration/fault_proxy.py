"""A TCP forwarder in front of a real service, so a test can make the service go away at an exact
point of a conversation and come back later.

The point is a request: the proxy reads what the client sends and, when the armed pattern (for
example `PUT /bucket/.../manifest.json` or `POST /api/2.0/mlflow/model-versions/create`) or the
armed byte count is reached, it cuts: every open connection is closed before that request reaches
the service, the listening socket is closed (new connections are refused, as with a stopped
process) and `on_cut` runs (the tests stop the real service there). `restore(port)` listens again
on the same port and forwards to the (restarted) service.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable

HOST = "127.0.0.1"


class FaultProxy:
    def __init__(self, upstream_port: int, on_cut: Callable[[], None] | None = None) -> None:
        self.upstream_port = upstream_port
        self.on_cut = on_cut
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[bytes] | None = None
        self._after_bytes: int | None = None
        self._sent = 0
        self._socks: set[socket.socket] = set()
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._start_accepting()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def arm(self, *, pattern: bytes | None = None, after_bytes: int | None = None) -> None:
        """Cut before the first request matching the regex `pattern`, or once `after_bytes` more
        bytes were sent."""
        with self._lock:
            self._pattern = re.compile(pattern) if pattern is not None else None
            self._after_bytes, self._sent = after_bytes, 0
            self.cut.clear()

    def restore(self, upstream_port: int) -> None:
        with self._lock:
            self._pattern = self._after_bytes = None
            self.upstream_port = upstream_port
            self.cut.clear()
        self._listener = self._listen(self.port)
        self._start_accepting()

    def close(self) -> None:
        self._drop_all()

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        s.listen(64)
        return s

    def _start_accepting(self) -> None:
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by a cut
            try:
                upstream = socket.create_connection((HOST, self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client and self._should_cut(tail + data, len(data)):
                    self._trigger()
                    return
                tail = data[-256:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _should_cut(self, window: bytes, n: int) -> bool:
        with self._lock:
            if self.cut.is_set():
                return True
            if self._pattern is not None and self._pattern.search(window):
                return True
            if self._after_bytes is not None:
                self._sent += n
                return self._sent >= self._after_bytes
            return False

    def _trigger(self) -> None:
        with self._lock:
            first = not self.cut.is_set()
            self.cut.set()
            self._pattern = self._after_bytes = None
        if not first:
            return
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._drop_all()
        if self.on_cut is not None:
            self.on_cut()

    def _drop_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            # shutdown, not only close: a close() from this thread would not wake the pump thread
            # blocked in recv() on the socket, and the client would wait for its read timeout
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
