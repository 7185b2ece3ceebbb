"""Zero-downtime version switch of a model in a Triton repository.

The switch installs the target version's own config.pbtxt (kept in its version directory; for
older repositories: the current one with version_policy `specific: [target]`), by temporary
file + rename, and asks Triton to reload the model. Triton keeps the old version serving until the
new one is ready, then unloads it; a version that fails to load leaves the old one serving.
On any failure (load refused, load timeout, not ready, smoke check raised) the previous
config.pbtxt bytes are put back and the model reloaded, so the repository on disk again
describes what is serving.

A load that hangs (a python stub or `initialize` that never returns) blocks every later load
of that model inside Triton. When the server runs on this host, the switch ends such a load by
killing the stub processes started for the target version directory; Triton then fails that
load and the restore proceeds. With a remote server the restore load waits behind the hung one
and the error says so.

    result = switch_version(ModelControl(url), repo, "llm", 3, timeout=300,
                            smoke=lambda v: client.generate("llm", "hi", version=v))
    print(result.load_s, result.overhead_s)
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from pipeline.errors import ServiceError
from pipeline.triton import pbtxt
from pipeline.triton.control import ModelControl, ModelLoadError
from pipeline.triton.repository import ModelDir, version_config_text
from pipeline.util import atomic

STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class SwitchResult:
    """Timings of a switch that succeeded. `load_s` is Triton's own load call."""

    model: str
    version: int
    previous_versions: list[int]  # READY before the switch
    load_s: float
    ready_s: float  # polling readiness after the load call returned
    smoke_s: float
    total_s: float

    @property
    def overhead_s(self) -> float:
        """Seconds the switch added on top of Triton's load (config write, checks, smoke)."""
        return self.total_s - self.load_s


class SwitchError(ServiceError):
    """The switch failed; the previous config.pbtxt was restored (see `restored`, `serving`)."""

    def __init__(self, message: str, *, model: str, version: int, reason: str, restored: bool,
                 serving: list[int] | None, hint: str | None = None) -> None:
        self.model = model
        self.version = version
        self.reason = reason  # "load", "timeout", "error", "not-ready", "smoke"
        self.restored = restored  # the previous config reloaded (its bytes are always back)
        self.serving = serving
        super().__init__(message, hint=hint)


@dataclass
class _Timer:
    t0: float = field(default_factory=time.monotonic)

    def __call__(self) -> float:
        return time.monotonic() - self.t0


class ConfigSource(Protocol):
    """Where one model's config.pbtxt and version directories live (a local directory, S3)."""

    def check(self, version: int) -> None:
        """ServiceError unless config.pbtxt and the version directory exist."""

    def read(self) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def lock(self, timeout: float) -> AbstractContextManager[object]: ...

    def local_version_dir(self, version: int) -> Path | None:
        """The directory a python stub of `version` runs from on this host (to end a hung load)."""


@dataclass
class LocalConfig:
    """config.pbtxt in a local model repository: replaced by temporary file + rename, mode kept."""

    repository: Path
    model: str

    @property
    def path(self) -> Path:
        return self.repository / self.model / "config.pbtxt"

    def check(self, version: int) -> None:
        if not self.path.is_file():
            raise ServiceError(f"no config.pbtxt for model '{self.model}' in {self.repository}")
        vdir = self.repository / self.model / str(int(version))
        if not vdir.is_dir():
            raise ServiceError(f"model '{self.model}' has no version directory {vdir}")

    def read(self) -> bytes:
        return self.path.read_bytes()

    def write(self, data: bytes) -> None:
        mode = self.path.stat().st_mode & 0o7777
        _write(self.path, data, mode)

    def lock(self, timeout: float) -> AbstractContextManager[object]:
        return FileLock(str(self.repository / f".{self.model}.switch.lock"), timeout=timeout)

    def local_version_dir(self, version: int) -> Path | None:
        return self.repository / self.model / str(version)


def switch_version(control: ModelControl, repository: Path | None, model: str, version: int, *,
                   timeout: float = 300.0, smoke: Callable[[int], object] | None = None,
                   restore_timeout: float = 120.0, kill_hung_stubs: bool = True,
                   config: ConfigSource | None = None) -> SwitchResult:
    """Make `version` the only version of `model` that serves, without downtime.

    `timeout` bounds the load plus readiness wait; `smoke(version)` runs once the version is
    ready and fails the switch by raising. Raises SwitchError after restoring the previous
    config.pbtxt and reloading, or ServiceError before touching anything when the target
    version directory or config.pbtxt is missing. `config` says where the model lives when it
    is not `repository/model` on this host (an s3:// repository).
    """
    total = _Timer()
    if config is None and repository is None:
        raise ServiceError("switch_version needs a repository or a config source")
    config = config if config is not None else LocalConfig(Path(str(repository)), model)
    config.check(version)
    with config.lock(timeout):
        old_bytes = config.read()
        # the version's own rendered config when it has one (an ensemble's steps and engine paths
        # differ per version), else the current config with only the policy changed
        own = (version_config_text(ModelDir(config.repository / model), version)
               if isinstance(config, LocalConfig) else None)
        new_text = own or pbtxt.with_version_policy(old_bytes.decode(), specific=[version])
        previous = control.ready_versions(model)

        config.write(new_text.encode())
        load_s = ready_s = smoke_s = 0.0
        stage = "load"
        try:
            load_s = control.load(model, timeout=timeout)
            stage = "not-ready"
            step = _Timer()
            control.wait_ready(model, version, timeout=max(timeout - total(), 1.0))
            ready_s = step()
            stage = "smoke"
            if smoke is not None:
                step = _Timer()
                smoke(version)
                smoke_s = step()
        except BaseException as e:
            if isinstance(e, ModelLoadError) and e.timed_out:
                stage = "timeout"
            elif stage == "load" and not isinstance(e, ModelLoadError):
                stage = "error"
            _restore(control, config, model, version, old_bytes=old_bytes, cause=e, reason=stage,
                     restore_timeout=restore_timeout, kill_hung_stubs=kill_hung_stubs)
            raise  # _restore raises SwitchError; this re-raises KeyboardInterrupt and the like
        return SwitchResult(model=model, version=version, previous_versions=previous,
                            load_s=load_s, ready_s=ready_s, smoke_s=smoke_s, total_s=total())


def _restore(control: ModelControl, config: ConfigSource, model: str, version: int, *,
             old_bytes: bytes, cause: BaseException, reason: str,
             restore_timeout: float, kill_hung_stubs: bool) -> None:
    config.write(old_bytes)
    killed: list[int] = []
    vdir = config.local_version_dir(version)
    if reason == "timeout" and kill_hung_stubs and vdir is not None:
        killed = kill_stubs(vdir)
    restored = False
    note = ""
    if reason == "timeout" and not killed:
        # The hung load is still pending in Triton and a reload would queue behind it. The
        # previous version was never unloaded (the new one never became ready), so it serves.
        note = (f"; Triton is still loading version {version} and will switch to it if that "
                "load ever finishes: restart the server to cancel it")
    else:
        try:
            control.load(model, timeout=restore_timeout)
            restored = True
        except ServiceError as e:
            note = f"; reloading the previous config failed too: {e}"
    serving: list[int] | None
    try:
        serving = control.ready_versions(model)
    except ServiceError:
        serving = None
    if not isinstance(cause, Exception):
        return  # KeyboardInterrupt, SystemExit: restored, let it propagate
    what = {"timeout": "load timed out", "load": "Triton refused the new version",
            "error": "load request failed", "not-ready": "new version did not become ready",
            "smoke": "smoke check failed"}[reason]
    if killed:
        note += f"; killed hung stub process(es) {killed}"
    raise SwitchError(
        f"switch of model '{model}' to version {version} failed ({what}: {cause}); "
        f"config.pbtxt restored, serving versions {serving}{note}",
        model=model, version=version, reason=reason, restored=restored, serving=serving,
    ) from cause


def kill_stubs(version_dir: Path) -> list[int]:
    """SIGKILL python-backend stub processes running a model from `version_dir` on this host.

    Triton then fails the pending load of that version ("stub process is not healthy")
    instead of waiting for it forever. Returns the pids killed.
    """
    target = version_dir.resolve()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) < 2 or not argv[0].decode(errors="replace").endswith(STUB_NAME):
            continue
        model_file = Path(argv[1].decode(errors="replace"))
        if model_file.parent.resolve() != target:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
    return killed


def _write(path: Path, data: bytes, mode: int) -> None:
    atomic.write_bytes(path, data)
    path.chmod(mode)
