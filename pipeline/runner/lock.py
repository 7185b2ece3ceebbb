"""One run per recipe at a time: an flock on artifacts/locks/<recipe>.lock.

A second run waits (serialized) and says who holds the lock; the kernel releases a lock
held by a killed process, so a SIGKILLed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.errors import LockError


@contextlib.contextmanager
def recipe_lock(artifacts: Path, name: str, *, timeout: float | None = None,
                on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    path = artifacts / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    holder = path.read_text().strip() or "another run"
                    on_wait(f"waiting for {holder} to finish (lock {path})")
                    told = True
                if timeout is not None and time.monotonic() - start > timeout:
                    raise LockError(f"recipe '{name}' is locked by another run ({path})") from None
                time.sleep(0.2)
        held = True
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield
    finally:
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock
