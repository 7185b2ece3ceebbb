"""Subprocesses: argument lists, no shell, own process group, terminate-wait-kill."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress


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
