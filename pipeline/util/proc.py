"""Subprocesses: argument lists, no shell, own process group, terminate-wait-kill."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from pipeline.errors import ServiceError
from pipeline.util.net import wait_until


def stop_process_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], *, grace: float = 5.0) -> int | None:
    """SIGTERM the process group, wait `grace` seconds, then SIGKILL it. Returns the exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def log_tail(log: Path, n: int = 3) -> str:
    """The last `n` lines of a server's log on one line, for an error message."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(lines[-n:])


def start_server(argv: list[str], log: Path, *, ready: Callable[[], bool], timeout: float, what: str,
                 interval: float = 1.0, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own session, output appended to `log`, and poll `ready` until it holds.

    Its own session: stopping signals the whole group, and a Ctrl-C meant for us is not its. A server
    that exits or is not ready within `timeout` is stopped and reported with its last log lines.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(ready, timeout=timeout, interval=interval, what=what, alive=lambda: proc.poll() is None)
    except TimeoutError as e:
        stop_process_group(proc, grace=15)
        raise ServiceError(f"{e}; last log lines: {log_tail(log)} (log: {log})") from None
    return proc
