"""Publish a bundle as the next Triton version, and roll back, without the old version stopping.

publish: verify the bundle, check it fits the runtime, materialize it as `<model>/<N>/`, then
either switch the live server to it (load, ready, smoke; on any failure the previous policy is
restored and the new directory removed, so the repository is as it was) or, with no server,
set the version policy. Older versions beyond `keep` are pruned; served ones never are.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.bundle import RuntimeFacts, check_compatible, load_bundle
from pipeline.errors import ServiceError
from pipeline.triton import pbtxt
from pipeline.triton.repository import (
    ModelDir,
    RepositoryError,
    materialize_version,
    prune,
    reference_config,
    render_config,
)
from pipeline.util import atomic


@dataclass
class Published:
    model: str
    version: int
    bundle_id: str
    repository: str
    previous: list[int]
    pruned: list[int]
    switched: bool
    seconds: dict[str, float]
    already: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def smoke_check(server_url: str, model: str, prompt: str, timeout: float = 120.0) -> Any:
    from pipeline.triton.client import LLMClient

    client = LLMClient(server_url, timeout=timeout)

    def smoke(version: int) -> None:
        gen = client.generate(model, prompt, max_tokens=4, version=version)
        if not gen.text.strip():
            raise ServiceError(f"smoke generation from {model} v{version} returned no text")

    return smoke


def publish_bundle(bundle_dir: Path, repository: Path, model: str, *, facts: RuntimeFacts, keep: int = 3,
                   server_url: str | None = None, load_timeout: float = 300.0,
                   smoke_prompt: str = "The capital of France is", instances: int = 1) -> Published:
    bundle = load_bundle(bundle_dir)  # every file's sha256, before anything is written
    check_compatible(bundle, facts)
    md = ModelDir(repository / model)
    existing = md.version_of(bundle.id)
    previous = md.served_versions()
    if existing is not None and existing in previous and not server_url:
        return Published(model, existing, bundle.id, str(repository), previous, [], False, {}, already=True)
    created = existing is None
    version = existing if existing is not None else (max(md.versions(), default=0) + 1)
    if created:
        materialize_version(md, bundle, version)
    seconds: dict[str, float] = {}
    try:
        if not md.config_path.is_file():
            if bundle.backend != "reference":
                raise RepositoryError(f"publishing a '{bundle.backend}' bundle into Triton is not wired yet")
            cfg = reference_config(model, bundle, versions=[version], instances=instances)
            atomic.write_text(md.config_path, render_config(cfg))
            if server_url:
                _first_load(server_url, model, version, load_timeout, smoke_prompt)
        elif server_url:
            from pipeline.triton.control import ModelControl
            from pipeline.triton.switch import switch_version

            result = switch_version(ModelControl(server_url), repository, model, version, timeout=load_timeout,
                                    smoke=smoke_check(server_url, model, smoke_prompt))
            seconds = {"load": result.load_s, "ready": result.ready_s, "smoke": result.smoke_s,
                       "total": result.total_s, "overhead": result.overhead_s}
        else:
            text = pbtxt.with_version_policy(md.config_path.read_text(), specific=[version])
            atomic.write_text(md.config_path, text)
    except BaseException:
        if created:
            shutil.rmtree(md.version_dir(version), ignore_errors=True)
            if not md.versions():
                md.config_path.unlink(missing_ok=True)
        raise
    pruned = prune(md, keep, protect=[version, *previous])
    return Published(model, version, bundle.id, str(repository), previous, pruned, bool(server_url), seconds,
                     already=not created)


def _first_load(server_url: str, model: str, version: int, timeout: float, prompt: str) -> None:
    from pipeline.triton.control import ModelControl

    control = ModelControl(server_url)
    control.load(model, timeout=timeout)
    control.wait_ready(model, version, timeout=timeout)
    smoke_check(server_url, model, prompt)(version)


def rollback(repository: Path, model: str, *, server_url: str | None, to: int | None = None,
             load_timeout: float = 300.0, smoke_prompt: str = "The capital of France is") -> Published:
    """Serve the previous (or the given) version again, through the same load/ready/smoke path."""
    md = ModelDir(repository / model)
    served = md.served_versions()
    if not served:
        raise ServiceError(f"model '{model}' has no served version in {repository}")
    current = max(served)
    if to is None:
        older = [v for v in md.versions() if v < current]
        if not older:
            raise ServiceError(f"model '{model}' has no version older than {current} on disk to roll back to; "
                               "publish one with `trtbuild publish` (pruned versions come back from the store)")
        to = max(older)
    if to not in md.versions():
        raise ServiceError(f"model '{model}' version {to} is not on disk in {repository}; known: {md.versions()}")
    seconds: dict[str, float] = {}
    if server_url:
        from pipeline.triton.control import ModelControl
        from pipeline.triton.switch import switch_version

        result = switch_version(ModelControl(server_url), repository, model, to, timeout=load_timeout,
                                smoke=smoke_check(server_url, model, smoke_prompt))
        seconds = {"load": result.load_s, "ready": result.ready_s, "smoke": result.smoke_s,
                   "total": result.total_s, "overhead": result.overhead_s}
    else:
        atomic.write_text(md.config_path, pbtxt.with_version_policy(md.config_path.read_text(), specific=[to]))
    return Published(model, to, md.bundle_id(to) or "", str(repository), served, [], bool(server_url), seconds)
