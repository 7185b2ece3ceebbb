"""Subprocesses: argument lists, no shell, own process group, terminate-wait-kill.

Every long-running process trtbuild starts goes through `spawn` and is stopped by
`stop_process_group`, so that nothing it started outlives the stage: members of its process group
left behind by a leader that already exited are stopped too, and a `docker run`/`podman run` gets
a name and is stopped by it (pipeline/util/container.py says why signalling the client is not enough).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from pipeline.errors import ServiceError
from pipeline.util import container as containers
from pipeline.util.net import wait_until


class Process(subprocess.Popen[bytes]):
    """A process started by `spawn`: leader of its own session; `container` when it is a container run."""

    argv: list[str]  # as started: a container run with the options spawn added
    container: containers.Container | None = None


def spawn(argv: Sequence[str], *, role: str, env: dict[str, str] | None = None, env_keys: Iterable[str] = (),
          **popen: Any) -> Process:
    """Popen `argv` in a new session; a container run gets --init, a name and `-e KEY` for `env_keys`.

    `role` names what runs (trtllm-serve, trtllm-build, ...) in the container's name.
    """
    full, ctr = containers.named_run(argv, role, env_keys=env_keys, env=env)
    proc = Process(full, env=env, start_new_session=True, **popen)
    proc.argv, proc.container = full, ctr
    return proc


def stop_process_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], *, grace: float = 5.0) -> int | None:
    """Stop a process started in its own session, and all it started; return its exit code.

    A container run is stopped by name first (`docker stop -t grace`), also when the client already
    died. Then the process group gets SIGTERM, `grace` seconds, SIGKILL: the group is signalled even
    when its leader has exited, since its children may not have. Last, `docker rm -f` the container.
    """
    ctr: containers.Container | None = getattr(proc, "container", None)
    if ctr is not None:
        containers.stop(ctr, grace=grace)
    rc = _stop_group(proc, grace=grace)
    if ctr is not None:
        containers.remove(ctr)
    return rc


def _stop_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], *, grace: float) -> int | None:
    rc = proc.poll()
    if rc is not None and not _group_alive(proc.pid):
        return rc
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    if rc is None:
        with suppress(subprocess.TimeoutExpired):
            rc = proc.wait(timeout=grace)
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return rc if rc is not None else proc.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    """Does process group `pgid` still have a member that is not a zombie?"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def log_tail(log: Path, n: int = 3) -> str:
    """The last `n` lines of a server's log on one line, for an error message."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(lines[-n:])


def start_server(argv: list[str], log: Path, *, ready: Callable[[], bool], timeout: float, what: str,
                 interval: float = 1.0, env: dict[str, str] | None = None, role: str = "server") -> Process:
    """Start a server in its own session, output appended to `log`, and poll `ready` until it holds.

    Its own session: stopping signals the whole group, and a Ctrl-C meant for us is not its. A server
    that exits or is not ready within `timeout` is stopped and reported with its last log lines.
    `role` names a container run (see `spawn`).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = spawn(argv, role=role, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(ready, timeout=timeout, interval=interval, what=what, alive=lambda: proc.poll() is None)
    except TimeoutError as e:
        stop_process_group(proc, grace=15)
        raise ServiceError(f"{e}; last log lines: {log_tail(log)} (log: {log})") from None
    except BaseException:
        stop_process_group(proc, grace=15)
        raise
    return proc
