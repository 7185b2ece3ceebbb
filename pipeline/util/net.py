"""Ports and readiness polling for servers started on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def reachable(url: str, *, timeout: float = 5.0) -> str | None:
    """None when something accepts TCP connections at the URL's host and port; else why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s)://host:port URL"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {parts.hostname}:{port} ({e.strerror or e})"


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.1,
               what: str = "condition", alive: Callable[[], bool] | None = None) -> None:
    """Poll `check` until it returns True. Raises TimeoutError naming `what`.

    `alive`, when given, is polled too: a process that died is reported at once instead
    of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - a server that is not up yet raises; keep polling
            pass
        if alive is not None and not alive():
            raise TimeoutError(f"{what}: process exited before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(interval)
