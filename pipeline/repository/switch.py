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

    result = switch_version(ModelControl(url), open_repository("triton_repo"), "llm", 3, timeout=300,
                            smoke=lambda v: client.generate("llm", "hi", version=v))
    print(result.load_s, result.overhead_s)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ServiceError
from pipeline.repository import pbtxt
from pipeline.repository.base import ModelRepository
from pipeline.repository.uri import open_repository
from pipeline.triton.control import ModelControl, ModelLoadError
from pipeline.triton.stubs import kill_stubs


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


def switch_version(control: ModelControl, repository: ModelRepository | Path | str, model: str, version: int, *,
                   timeout: float = 300.0, smoke: Callable[[int], object] | None = None,
                   restore_timeout: float = 120.0, kill_hung_stubs: bool = True) -> SwitchResult:
    """Make `version` the only version of `model` that serves, without downtime.

    `timeout` bounds the load plus readiness wait; `smoke(version)` runs once the version is
    ready and fails the switch by raising. Raises SwitchError after restoring the previous
    config.pbtxt and reloading, or ServiceError before touching anything when the target
    version or config.pbtxt is missing. `repository`: a directory, s3://bucket/prefix, or an
    open ModelRepository.
    """
    total = _Timer()
    repo = open_repository(repository)
    if repo.config(model) is None:
        raise ServiceError(f"no config.pbtxt for model '{model}' in {repo.uri}")
    if version not in repo.versions(model):
        raise ServiceError(f"model '{model}' has no version directory {repo.where(model, version)}")
    with repo.writer(model, timeout):
        old_bytes = repo.config(model) or b""
        # the version's own rendered config when it has one (an ensemble's steps and engine paths
        # differ per version), else the current config with only the policy changed
        new_text = (repo.version_config_text(model, version)
                    or pbtxt.with_version_policy(old_bytes.decode(), specific=[version]))
        previous = control.ready_versions(model)

        repo.write_config(model, new_text.encode(), "switch.config")
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
            _restore(control, repo, model, version, old_bytes=old_bytes, cause=e, reason=stage,
                     restore_timeout=restore_timeout, kill_hung_stubs=kill_hung_stubs)
            raise  # _restore raises SwitchError; this re-raises KeyboardInterrupt and the like
        return SwitchResult(model=model, version=version, previous_versions=previous,
                            load_s=load_s, ready_s=ready_s, smoke_s=smoke_s, total_s=total())


def _restore(control: ModelControl, repo: ModelRepository, model: str, version: int, *,
             old_bytes: bytes, cause: BaseException, reason: str,
             restore_timeout: float, kill_hung_stubs: bool) -> None:
    repo.write_config(model, old_bytes, "switch.restore")
    killed: list[int] = []
    vdir = repo.local_version_dir(model, version)
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
