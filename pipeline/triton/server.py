"""Find a tritonserver, prepare what its python backend needs on this host, run it on loopback.

Where the binary comes from (locate_tritonserver):
  1. an explicit path;
  2. `tritonserver` on PATH (the Triton / TensorRT-LLM container on a GPU host);
  3. the binary inside the nvidia-pytriton wheel (`pytriton/tritonserver`, Triton 2.51 with the
     python backend only), which is how this project runs Triton on a CPU-only machine.

A wheel-layout install needs a backend directory holding `python/` with symlinks to
`libtriton_python.so`, `triton_python_backend_utils.py` and the stub built for this Python
(symlinks keep the bundled libraries' RPATH working), the interpreter's LIBDIR on
LD_LIBRARY_PATH (the stub links libpython) and a `bin` directory first on PATH whose `python3`
gives the stub its site-packages. Both are prepared once under the cache directory.

numpy: the wheel's stub is compiled against numpy 1. Under numpy 2 it silently reads every
input tensor with stride 0 (INT32 [1, 2, 3] arrives as [1, 1, 1]), crashes on BYTES inputs and
rejects every output ("output tensor shape does not match size"). When this interpreter has
numpy >= 2, locate_tritonserver gives the stub its own small venv (cached): numpy<2 installed
with pip, then this environment's site-packages chained after it, so models still import
torch, transformers and this package; it also stops the stub writing __pycache__ into model
version directories. Pass stub_numpy1=False to skip that.

    install = locate_tritonserver(None)
    with TritonServer(install).start(repo, load=["llm"]) as server:
        ModelControl(server.http_url).wait_ready("llm", timeout=30)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from filelock import FileLock

from pipeline.errors import ServiceError, UsageError
from pipeline.triton import _http
from pipeline.util import atomic
from pipeline.util.net import free_port, wait_until
from pipeline.util.proc import stop_process_group

SHM_DIR = Path("/dev/shm")  # noqa: S108 - where the python backend puts its regions
SHM_PREFIX = "triton_python_backend_shm_region_"
STUB_NUMPY_SPEC = "numpy<2"
_STUB_ENV_FORMAT = 2  # bump when ensure_stub_env builds something different
_SHM_RE = re.compile(re.escape(f"{SHM_DIR}/") + "(" + SHM_PREFIX + r"[A-Za-z0-9_.-]+)")
_PORT_CLASH = re.compile(r"already in use|Address in use|EADDRINUSE", re.IGNORECASE)
_WHEEL_INSTALL_HINT = ("pass the path of a tritonserver binary, run inside the Triton container, "
                       "or install the CPU stand-in: pip install --no-deps nvidia-pytriton==0.7.0")

ModelControlMode = Literal["none", "poll", "explicit"]


def default_cache_dir() -> Path:
    """$TRTBUILD_CACHE_DIR, else ~/.cache/trtbuild."""
    env = os.environ.get("TRTBUILD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trtbuild"


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what to give it so its python backend works."""

    binary: Path
    source: Literal["explicit", "path", "wheel"]
    backend_dir: Path | None = None  # --backend-directory; None keeps the binary's default
    stub_bin_dir: Path | None = None  # first on PATH: the stub's `python3` picks site-packages
    lib_dir: Path | None = None  # on LD_LIBRARY_PATH: the libpython the stub links

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        if self.stub_bin_dir is not None:
            env["PATH"] = os.pathsep.join(
                p for p in (str(self.stub_bin_dir), env.get("PATH", "")) if p)
        if self.lib_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(self.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
        return env

    def argv(self) -> list[str]:
        args = [str(self.binary)]
        if self.backend_dir is not None:
            args.append(f"--backend-directory={self.backend_dir}")
        return args


def locate_tritonserver(explicit: Path | None = None, *, cache_dir: Path | None = None,
                        stub_numpy1: bool = True) -> TritonInstall:
    """The tritonserver to run: `explicit`, else on PATH, else the nvidia-pytriton wheel's.

    Raises ServiceError naming what was tried when there is none.
    """
    cache = (cache_dir or default_cache_dir()) / "triton"
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ServiceError(f"tritonserver not found or not executable at {path}",
                               hint=_WHEEL_INSTALL_HINT)
        return _install_for(path.absolute(), "explicit", cache, stub_numpy1)
    on_path = shutil.which("tritonserver")
    if on_path:
        return _install_for(Path(on_path), "path", cache, stub_numpy1)
    root = _wheel_root()
    if root is None or not (root / "bin" / "tritonserver").is_file():
        raise ServiceError("no tritonserver: none given, none on PATH, and the nvidia-pytriton "
                           "wheel (pytriton/tritonserver) is not installed",
                           hint=_WHEEL_INSTALL_HINT)
    return _install_for(root / "bin" / "tritonserver", "wheel", cache, stub_numpy1)


def _wheel_root() -> Path | None:
    """`pytriton/tritonserver` of an installed nvidia-pytriton, found without importing it."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        root = Path(loc) / "tritonserver"
        if root.is_dir():
            return root
    return None


def _install_for(binary: Path, source: Literal["explicit", "path", "wheel"], cache: Path,
                 stub_numpy1: bool) -> TritonInstall:
    root = binary.resolve().parent.parent
    if (root / "python_backend_stubs").is_dir() and (root / "backends" / "python").is_dir():
        backend_dir = prepare_backend_dir(root, cache)
        stub_bin = ensure_stub_env(cache) if stub_numpy1 and _numpy_major() >= 2 else Path(sys.executable).parent
        libdir = sysconfig.get_config_var("LIBDIR")
        return TritonInstall(binary=binary, source=source, backend_dir=backend_dir,
                             stub_bin_dir=stub_bin, lib_dir=Path(libdir) if libdir else None)
    # A full Triton install (container): its own backends and stubs, its own environment.
    backends = root / "backends"
    return TritonInstall(binary=binary, source=source,
                         backend_dir=backends if backends.is_dir() else None)


def _py_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_backend_dir(wheel_root: Path, cache: Path) -> Path:
    """`<cache>/backends-<id>/python/` with the three symlinks the python backend needs.

    Idempotent: an existing directory whose links point at the right files is reused.
    """
    py = _py_tag()
    stub = wheel_root / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (wheel_root / "python_backend_stubs").iterdir())
        raise ServiceError(f"the tritonserver at {wheel_root} has no python backend stub for "
                           f"Python {py} (it has {', '.join(have) or 'none'})")
    backend = wheel_root / "backends" / "python"
    links = {
        "libtriton_python.so": backend / "libtriton_python.so",
        "triton_python_backend_utils.py": backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": stub,
    }
    for target in links.values():
        if not target.is_file():
            raise ServiceError(f"incomplete tritonserver install: {target} is missing")
    key = hashlib.sha256(f"{wheel_root.resolve()}|{py}".encode()).hexdigest()[:12]
    final = cache / f"backends-{key}"

    def valid() -> bool:
        return all((final / "python" / n).is_symlink()
                   and (final / "python" / n).resolve() == t.resolve() for n, t in links.items())

    if valid():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".backends.lock"), timeout=60):
        if not valid():
            with atomic.staged_dir(final) as tmp:
                (tmp / "python").mkdir()
                for name, target in links.items():
                    (tmp / "python" / name).symlink_to(target.resolve())
    return final


def _numpy_major() -> int:
    try:
        return int(importlib.metadata.version("numpy").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


def ensure_stub_env(cache: Path, *, timeout: float = 600.0) -> Path:
    """A venv for the python backend stub: numpy<2 first, then this environment's packages.

    Returns its `bin` directory (to put first on PATH). Built once per Python version and
    base environment with pip (`pip install --target ... numpy<2`), reused afterwards.
    """
    import site

    py = _py_tag()
    bases = [p for p in site.getsitepackages() if Path(p).is_dir()]
    key = json.dumps([_STUB_ENV_FORMAT, sys.prefix, bases])
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    final = cache / f"stub-env-py{py}-{tag}"
    marker = final / "trtbuild-stub-env.json"
    if marker.is_file():
        return final / "bin"
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".stub-env.lock"), timeout=timeout):
        if marker.is_file():
            return final / "bin"
        with atomic.staged_dir(final) as tmp:
            _run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], timeout,
                 "create the stub venv")
            sitedir = tmp / "lib" / f"python{py}" / "site-packages"
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--no-deps", "--target", str(sitedir), STUB_NUMPY_SPEC], timeout,
                 f"install {STUB_NUMPY_SPEC} for the python backend stub")
            # Lines starting with `import` run at startup: chain the base environment after
            # the stub's own numpy, .pth files (editable installs) included. The stub ignores
            # PYTHON* variables, so bytecode writing is turned off here: otherwise the stub
            # leaves __pycache__ in model version directories, which are content.
            (sitedir / "zz_trtbuild_base_env.pth").write_text(
                "import sys; sys.dont_write_bytecode = True\n"
                + "".join(f"import site; site.addsitedir({b!r})\n" for b in bases))
            numpy_dist = sorted(sitedir.glob("numpy-*.dist-info"))
            (tmp / marker.name).write_text(json.dumps({
                "python": sys.version, "base_prefix": sys.prefix, "base_sites": bases,
                "numpy": numpy_dist[0].name if numpy_dist else None}, indent=1))
    return final / "bin"


def _run(argv: list[str], timeout: float, what: str) -> None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise ServiceError(f"could not {what}: no result after {timeout:g}s") from e
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise ServiceError(f"could not {what} (exit {res.returncode}): {tail}",
                           hint="the tritonserver wheel's python stub needs numpy<2; pass "
                                "stub_numpy1=False and give it an environment that has one")


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
