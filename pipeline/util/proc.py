"""Subprocesses: argument lists, no shell, own process group, terminate-wait-kill."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path


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
