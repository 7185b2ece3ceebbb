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

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock

from pipeline.errors import ServiceError
from pipeline.util import atomic

STUB_NUMPY_SPEC = "numpy<2"
_STUB_ENV_FORMAT = 2  # bump when ensure_stub_env builds something different
_WHEEL_INSTALL_HINT = ("pass the path of a tritonserver binary, run inside the Triton container, "
                       "or install the CPU stand-in: pip install --no-deps nvidia-pytriton==0.7.0")


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
