"""Run tritonserver on loopback: its own process group, a log file, readiness polling, and a stop
that leaves nothing behind (SIGTERM, then SIGKILL of the group, then the python backend's shared
memory regions it left in /dev/shm).

Where the binary comes from and what its python backend needs: install.py (locate_tritonserver,
TritonInstall; re-exported here).

    install = locate_tritonserver(None)
    with TritonServer(install).start(repo, load=["llm"]) as server:
        ModelControl(server.http_url).wait_ready("llm", timeout=30)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from pipeline.errors import ServiceError, UsageError
from pipeline.triton import _http
from pipeline.triton.install import TritonInstall, locate_tritonserver
from pipeline.util.net import free_port, wait_until
from pipeline.util.proc import stop_process_group

__all__ = ["SHM_DIR", "SHM_PREFIX", "TritonInstall", "TritonServer", "locate_tritonserver", "remove_shm",
           "server_argv"]

SHM_DIR = Path("/dev/shm")  # noqa: S108 - where the python backend puts its regions
SHM_PREFIX = "triton_python_backend_shm_region_"
_SHM_RE = re.compile(re.escape(f"{SHM_DIR}/") + "(" + SHM_PREFIX + r"[A-Za-z0-9_.-]+)")
_PORT_CLASH = re.compile(r"already in use|Address in use|EADDRINUSE", re.IGNORECASE)

ModelControlMode = Literal["none", "poll", "explicit"]


class TritonServer:
    """One tritonserver process in its own process group, logging to a file.

        server = TritonServer(install).start(repo, load=["m"])
        ... server.http_url, server.grpc_url ...
        server.stop()

    stop() sends SIGTERM, waits, SIGKILLs the whole group (python stubs included) and removes
    the python backend's shared-memory regions that the server left in /dev/shm.
    """

    def __init__(self, install: TritonInstall | None = None, *, log_path: Path | None = None,
                 extra_args: Sequence[str] = (), exit_timeout: int = 5,
                 startup_timeout: float = 60.0, env: Mapping[str, str] | None = None) -> None:
        self.install = install or locate_tritonserver(None)
        self.extra_args = list(extra_args)
        self.env = dict(env or {})  # added to the server's (and so its models') environment
        self.exit_timeout = exit_timeout
        self.startup_timeout = startup_timeout
        self._log_path_given = log_path
        self.log_path: Path | None = log_path
        self.host = "127.0.0.1"
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.repository: Path | str | None = None  # str: an s3:// repository
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_at = 0.0
        self._shm_seen: set[str] = set()

    # -- public ----------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port, as tritonclient.grpc expects it."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, repository: Path | str, *, http_port: int | None = None, grpc_port: int | None = None,
              host: str = "127.0.0.1", model_control: ModelControlMode = "explicit",
              load: Sequence[str] = (), timeout: float | None = None) -> TritonServer:
        """Start and wait until /v2/health/live answers (models in `load` are loaded by then).

        Free ports are picked when none are given, and picked again (3 tries) if another
        process takes one first. Raises ServiceError with the log tail if the server exits
        or is not live within `timeout` (default startup_timeout).
        """
        if self.running():
            raise ServiceError(f"tritonserver already running (pid {self.pid})")
        if model_control not in ("none", "poll", "explicit"):
            raise UsageError(f"model_control must be none, poll or explicit, got {model_control!r}")
        if load and model_control != "explicit":
            raise UsageError("load= needs model_control='explicit'")
        repo: Path | str
        if str(repository).startswith("s3://"):
            # Triton reads it itself (s3://host:port/bucket/prefix; AWS_* from the environment)
            repo = str(repository)
        else:
            repo = Path(repository).absolute()
            if not repo.is_dir():
                raise ServiceError(f"model repository {repo} is not a directory")
        attempts = 1 if http_port is not None or grpc_port is not None else 3
        attempt = 0
        while True:
            attempt += 1
            hp = http_port if http_port is not None else free_port(host)
            gp = grpc_port if grpc_port is not None else _other_free_port(host, hp)
            try:
                self._launch(repo, http_port=hp, grpc_port=gp, host=host, mode=model_control,
                             load=load,
                             timeout=self.startup_timeout if timeout is None else timeout)
                return self
            except _PortClashError as e:
                if attempt >= attempts:
                    raise ServiceError(
                        f"tritonserver could not bind {host}:{hp} (HTTP) / {host}:{gp} (gRPC): "
                        f"{e}", hint="choose other ports or leave them unset") from None

    def ensure_running(self) -> None:
        """Raise ServiceError with the exit code and the log tail if the server has died."""
        if self._proc is None:
            raise ServiceError("tritonserver was not started")
        rc = self._proc.poll()
        if rc is not None:
            raise ServiceError(f"tritonserver (pid {self._proc.pid}) exited with code {rc}; "
                               f"log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-64_000:].decode(errors="replace")
        # Triton prints wide option tables; keep the lines that say something.
        keep = [ln for ln in data.splitlines() if ln.strip() and not ln.startswith(("+", "|"))]
        return "\n".join(keep[-lines:])

    def shm_regions(self) -> set[str]:
        """Names of python-backend shared-memory regions mapped by this server's processes."""
        if self._proc is None:
            return set()
        found: set[str] = set()
        for pid in _group_pids(self._proc.pid):
            found |= _mapped_shm(pid)
        self._shm_seen |= found
        return found

    def stop(self, grace: float | None = None) -> int | None:
        """Stop the server and its stubs; returns its exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        self.shm_regions()  # remember what this server mapped while it can still be read
        wait = float(self.exit_timeout + 5) if grace is None else grace
        try:
            rc = stop_process_group(proc, grace=wait)
        finally:
            # Stubs outlive a server that died or was killed: finish the whole group.
            _kill_group(proc.pid)
            if self._log is not None:
                self._log.close()
                self._log = None
        self._remove_shm()
        self._proc = None
        return rc

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _launch(self, repo: Path | str, *, http_port: int, grpc_port: int, host: str, mode: str,
                load: Sequence[str], timeout: float) -> None:
        hp, gp = http_port, grpc_port
        argv = server_argv(self.install, repo, http_port=hp, grpc_port=gp, host=host, mode=mode,
                           load=load, exit_timeout=self.exit_timeout, extra_args=self.extra_args)
        log_path = self._log_path_given
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.host, self.http_port, self.grpc_port, self.repository = host, hp, gp, repo
        self._shm_seen = set()
        self._started_at = time.time()
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env={**self.install.environment(), **self.env},
                                      start_new_session=True)
        marks = (f"Started HTTPService at {host}:{hp}".encode(),
                 f"Started GRPCInferenceService at {host}:{gp}".encode())

        own_log = not any(a.startswith("--log-file") for a in self.extra_args)

        def live() -> bool:
            # Our own log must say we bound both ports: a live answer alone could come from
            # another process that took the port first.
            if own_log and not all(m in log_path.read_bytes() for m in marks):
                return False
            status, _ = _http.request("GET", f"http://{host}:{hp}/v2/health/live", timeout=2)
            return status == 200

        try:
            wait_until(live, timeout=timeout, interval=0.05, what="tritonserver",
                       alive=lambda: self._proc is not None and self._proc.poll() is None)
        except TimeoutError:
            tail = self.log_tail()
            rc = self._proc.poll()
            self.stop()
            if rc is not None and _PORT_CLASH.search(tail):
                raise _PortClashError(tail.splitlines()[-1] if tail else "port in use") from None
            if rc is not None:
                raise ServiceError(f"tritonserver exited with code {rc} during startup; "
                                   f"log {self.log_path}:\n{tail}") from None
            raise ServiceError(f"tritonserver not live after {timeout:g}s (a model in load= "
                               f"may hang in initialize); log {self.log_path}:\n{tail}") from None
        except BaseException:  # Ctrl-C: its own session does not get it, so stop it here
            self.stop()
            raise

    def _remove_shm(self) -> None:
        remove_shm(self._started_at, self._shm_seen)


class _PortClashError(Exception):
    pass


def server_argv(install: TritonInstall, repo: Path | str, *, http_port: int, grpc_port: int, host: str,
                mode: str, load: Sequence[str] = (), exit_timeout: int = 5,
                extra_args: Sequence[str] = ()) -> list[str]:
    """The tritonserver command line trtbuild uses everywhere (tests, serve, local up)."""
    return [
        *install.argv(),
        f"--model-repository={repo}",
        f"--model-control-mode={mode}",
        *(f"--load-model={m}" for m in load),
        "--strict-readiness=false",
        "--disable-auto-complete-config",
        "--allow-metrics=false",
        f"--exit-timeout-secs={exit_timeout}",
        f"--http-address={host}", f"--http-port={http_port}",
        f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        *extra_args,
    ]


def remove_shm(started_at: float, seen: Set[str] = frozenset()) -> None:
    """Remove python-backend regions a stopped server left: those it was seen mapping, and
    those created since it started that no live process maps (stubs that died unseen)."""
    doomed = set(seen)
    mapped, complete = _all_mapped_shm()
    if complete:
        for p in SHM_DIR.glob(SHM_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime >= started_at - 1 and p.name not in mapped:
                    doomed.add(p.name)
    for name in doomed - mapped:
        with contextlib.suppress(FileNotFoundError):
            (SHM_DIR / name).unlink()


def _other_free_port(host: str, taken: int) -> int:
    while True:
        port = free_port(host)
        if port != taken:
            return port


def _proc_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    out = []
    for pid in _proc_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(pid)
    return out


def _kill_group(pgid: int, wait: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while _group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _mapped_shm(pid: int) -> set[str]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return set(_SHM_RE.findall(maps))


def _all_mapped_shm() -> tuple[set[str], bool]:
    """Regions mapped by any process, and whether every process's maps could be read."""
    found: set[str] = set()
    complete = True
    for pid in _proc_pids():
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except FileNotFoundError:
            continue
        except OSError:
            complete = False
            continue
        found |= set(_SHM_RE.findall(maps))
    return found, complete
