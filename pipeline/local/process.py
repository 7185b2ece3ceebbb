"""Detached local servers: start them in their own session, recognise them later, stop only them.

A server started by `trtbuild local up` outlives the CLI, so a later `down` finds it through a
state file. A pid alone is not proof (pids are reused): a process is ours only if its pid, its
kernel start time and its command line all match what was recorded when it started.
Linux-only (/proc), like the rest of the local stack.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.util.net import wait_until

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcInfo:
    """What identifies a process we started: pid, kernel start time (clock ticks), argv."""

    pid: int
    start_time: int
    argv: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcInfo:
        return cls(int(d["pid"]), int(d["start_time"]), [str(a) for a in d.get("argv", [])])


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (field 3 = state is index 0)."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None  # field 22 of stat(5)


def session_id(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[3]) if f else None  # field 6 of stat(5)


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _reap(pid: int) -> None:
    """Collect a zombie if it is our own child (a server started by this very process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    f = _stat_fields(pid)
    if f is None:
        return False
    if f[0] in ("Z", "X"):
        _reap(pid)
        return False
    return True


def is_ours(info: ProcInfo) -> bool:
    """The recorded process is still running and is the one we started (not a reused pid)."""
    if not alive(info.pid):
        return False
    if start_time(info.pid) != info.start_time:
        return False
    return cmdline(info.pid) == info.argv


def spawn_detached(
    argv: list[str], *, env: dict[str, str], log_path: Path, cwd: Path
) -> tuple[subprocess.Popen[bytes], ProcInfo]:
    """Start `argv` in a new session (own process group), output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    st = None
    for _ in range(50):
        st = start_time(proc.pid)
        if st is not None:
            break
        time.sleep(0.01)
    return proc, ProcInfo(proc.pid, st or 0, list(argv))


def session_pids(sid: int) -> list[int]:
    out = []
    for d in _PROC.iterdir():
        if d.name.isdigit():
            pid = int(d.name)
            f = _stat_fields(pid)
            if f is not None and int(f[3]) == sid and f[0] not in ("Z", "X"):
                out.append(pid)
    return out


def _listen_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    return inodes


def port_owned_by_session(port: int, sid: int) -> bool:
    """Is the socket listening on `port` held by a process of session `sid`?

    Guards readiness checks: a server that failed to bind (mlflow exits 0 after Errno 98) must
    not be declared ready because someone else answers on that port.
    """
    inodes = _listen_inodes(port)
    if not inodes:
        return False
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid in session_pids(sid):
        fd_dir = _PROC / str(pid) / "fd"
        try:
            fds = list(fd_dir.iterdir())
        except (FileNotFoundError, PermissionError):
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if str(fd.readlink()) in wanted:
                    return True
    return False


def stop(info: ProcInfo, *, grace: float = 10.0) -> bool:
    """SIGTERM the process group of a process we started, wait, SIGKILL. False: not ours."""
    if not is_ours(info):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(info.pid) and not session_pids(info.pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    health: Callable[[int], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> None:
    """Wait until `health(port)` passes AND `port` is held by `proc`'s own session.

    Raises TimeoutError (from util.net.wait_until) if it does not, or as soon as `proc` exits.
    """

    def ready() -> bool:
        return health(port) and port_owned_by_session(port, proc.pid)

    def running() -> bool:
        return proc.poll() is None

    wait_until(ready, timeout=timeout, interval=interval, what=what, alive=running)
