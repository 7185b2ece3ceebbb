"""A fake `docker` client for tests: containers whose PID 1 ignores SIGTERM, stoppable only by name.

`install(tmp)` writes an executable `docker` (a small python script) into `tmp/bin` and returns a
FakeDocker that knows where it records things. Its behaviour follows the real client where that
matters to trtbuild:

- every call appends its argv (without argv[0]) as one JSON line to `calls.jsonl`;
- `run [OPTS] IMAGE [CMD...]` starts the "container": CMD (a long sleep when CMD is not on PATH,
  standing in for the image's own tool) in another session (it lives under the daemon, not in the
  client's process group) with SIGTERM and SIGINT ignored, as PID 1 ignores signals it has no
  handler for; only the variables named by `-e KEY` / `-e KEY=V` (plus PATH and HOME) reach it.
  The client forwards SIGTERM/SIGINT to it (sig-proxy), which changes nothing, and waits for it.
  The container's pid is recorded under its `--name` (or `unnamed-<client pid>`), so a test can
  see whether it still runs;
- `stop [-t N] NAME` and `rm -f NAME` kill the named container; an unknown name exits 1 with
  "No such container", like the real client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCRIPT = r'''
import json, os, shutil, signal, subprocess, sys
from pathlib import Path

STATE = Path(__STATE__)
VALUE_OPTS = {"--name", "-e", "--env", "-v", "--volume", "-w", "--workdir", "--gpus", "--ipc", "--network",
              "-p", "-u", "--user", "--entrypoint"}
with (STATE / "calls.jsonl").open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
cmd, args = sys.argv[1], sys.argv[2:]


def kill(name):
    pidfile = STATE / f"{name}.pid"
    if not pidfile.exists():
        print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
        return 1
    try:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink()
    return 0


if cmd == "run":
    name, env, i = f"unnamed-{os.getpid()}", {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}, 0
    while i < len(args) and args[i].startswith("-"):
        opt = args[i]
        if opt in VALUE_OPTS:
            value = args[i + 1]
            if opt == "--name":
                name = value
            if opt in ("-e", "--env"):
                key, eq, val = value.partition("=")
                if eq or key in os.environ:
                    env[key] = val if eq else os.environ[key]
            i += 2
        else:
            i += 1
    command = args[i + 1:]
    if not command or shutil.which(command[0], path=env["PATH"]) is None:
        command = [sys.executable, "-c", "import time; time.sleep(600)"]  # the image's own tool

    def pid1():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    child = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=pid1)
    (STATE / f"{name}.pid").write_text(str(child.pid))

    def proxy(signum, frame):
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, proxy)
    signal.signal(signal.SIGINT, proxy)
    rc = child.wait()
    (STATE / f"{name}.pid").unlink(missing_ok=True)  # --rm, or simply: it exited
    sys.exit(rc)
elif cmd == "stop":
    sys.exit(kill(args[-1]))
elif cmd == "rm":
    sys.exit(kill(args[-1]))
sys.exit(f"fake docker: {cmd} not faked")
'''


@dataclass
class FakeDocker:
    bin: Path  # put this first on PATH
    exe: Path
    state: Path

    def calls(self) -> list[list[str]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def containers(self) -> dict[str, int]:
        """Name -> pid of every container started and not stopped or removed."""
        return {p.stem: int(p.read_text()) for p in self.state.glob("*.pid")}

    def wait_for_container(self, timeout: float = 10.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.containers()
            if found:
                return next(iter(found.items()))
            time.sleep(0.05)
        raise AssertionError("the fake docker started no container")

    def kill_all(self) -> None:
        """Clean up after a test (what the code under test should have done)."""
        for pid in self.containers().values():
            kill(pid)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def install(tmp: Path) -> FakeDocker:
    bin_dir, state = tmp / "bin", tmp / "docker-state"
    bin_dir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "docker"
    exe.write_text(f"#!{sys.executable}\n" + SCRIPT.replace("__STATE__", repr(str(state))))
    exe.chmod(0o755)
    return FakeDocker(bin_dir, exe, state)


@contextlib.contextmanager
def ctrl_c_after(seconds: int) -> Iterator[None]:
    """Raise KeyboardInterrupt in the main thread after `seconds`, as a Ctrl-C would."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGALRM is also pytest-timeout's: its handler and timer are put back afterwards, so the
    # test keeps its timeout (less the time spent here)
    old = signal.signal(signal.SIGALRM, interrupt)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer - (time.monotonic() - start)))


def assert_gone(pid: int, what: str, *, wait: float = 5.0) -> None:
    """`pid` exits within `wait` seconds (it is killed either way, so a failing test leaves nothing)."""
    deadline = time.monotonic() + wait
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not alive(pid), what
    finally:
        kill(pid)
