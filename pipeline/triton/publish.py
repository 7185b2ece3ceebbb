"""Publish a bundle as the next Triton version, and roll back, without the old version stopping.

publish: verify the bundle, check it fits the runtime, with a server check that it has the
Triton backend the bundle needs, render and materialize it as `<model>/<N>/` (plus composing
models for an ensemble, see render.py), then either switch the live server to it (load, ready,
smoke; on any failure the previous config is restored and everything new removed, so the
repository is as it was) or, with no server, install its config. history.json records the
bundle and store of each version; older versions beyond `keep` are pruned, served ones never.

rollback: serve an older version again through the same switch. A version that was pruned comes
back from the bundle store named in history.json (every file's sha256 verified) and is
re-materialized under its own number first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.bundle import RuntimeFacts, check_compatible, load_bundle
from pipeline.errors import ServiceError
from pipeline.names import check_name
from pipeline.triton import history
from pipeline.triton.render import SERVER_BACKENDS, ServingOptions
from pipeline.triton.repository import (
    ModelDir,
    composing_models,
    install_config,
    materialize_version,
    prune,
    remove_version,
    version_composing,
)

SWITCHES = ("side-by-side", "drain", "rolling")
log = logging.getLogger(__name__)


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
    fetched: bool = False  # rollback re-materialized the version from the store

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BackendUnavailableError(ServiceError):
    """The server lacks the Triton backend a bundle needs."""


def smoke_check(server_url: str, model: str, prompt: str, timeout: float = 120.0, *,
                backend: str = "reference") -> Any:
    """A one-request generation against `model`, in the request interface of its layout."""
    from pipeline.triton.client import LLMClient

    client = LLMClient(server_url, timeout=timeout)

    def smoke(version: int) -> None:
        if backend == "pytorch":  # llmapi layout: sampling_param_* inputs, no max_tokens/stream
            text = _llmapi_generate(server_url, model, version, prompt, timeout)
        else:
            text = client.generate(model, prompt, max_tokens=4, version=version).text
        if not text.strip():
            raise ServiceError(f"smoke generation from {model} v{version} returned no text")

    return smoke


def _llmapi_generate(server_url: str, model: str, version: int, prompt: str, timeout: float) -> str:
    from urllib.parse import quote

    from pipeline.triton import _http

    url = f"{server_url.rstrip('/')}/v2/models/{quote(model, safe='')}/versions/{version}/generate"
    try:
        status, body = _http.request("POST", url, body={"text_input": prompt, "sampling_param_max_tokens": 4},
                                     timeout=timeout)
    except (_http.HTTPTimeoutError, _http.HTTPUnreachableError) as e:
        raise ServiceError(f"smoke generation from {model} v{version}: {e}") from e
    data = json.loads(body or b"{}")
    if status != 200 or "error" in data:
        raise ServiceError(f"smoke generation from {model} v{version}: HTTP {status}: {data}")
    out = data.get("text_output", "")
    return " ".join(out) if isinstance(out, list) else str(out)


def require_backend(server_url: str, backend: str, timeout: float = 60.0) -> None:
    """Refuse, before anything is written, a server without the Triton backend the bundle needs.

    Triton has no API listing its backends, so this loads a throwaway model (its config and one
    file sent in the request; Triton keeps them in a temporary directory of its own, never in the
    repository) and reads the refusal. Any other load failure means the backend exists.
    """
    from pipeline.triton.control import ModelControl, ModelLoadError

    name = SERVER_BACKENDS.get(backend)
    if name is None:
        return
    probe = f"_trtbuild_probe_{name}"
    config = {"name": probe, "backend": name, "max_batch_size": 0,
              "input": [{"name": "x", "data_type": "TYPE_INT32", "dims": [1]}],
              "output": [{"name": "y", "data_type": "TYPE_INT32", "dims": [1]}]}
    control = ModelControl(server_url)
    try:
        control.load(probe, config=config, files={"1/probe": b""}, timeout=timeout)
    except ModelLoadError as e:
        if "unable to find backend" in str(e):  # Triton 2.x wording for a missing backend library
            raise BackendUnavailableError(
                f"{name} backend not available on this tritonserver ({server_url}); a '{backend}' "
                f"bundle needs it", hint="serve from the TensorRT-LLM Triton container "
                "(nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3), or publish without --server-url "
                "to only write the repository") from None
        return  # the backend exists; the throwaway model itself is not loadable
    with contextlib.suppress(ServiceError):
        control.unload(probe)


def publish_bundle(bundle_dir: Path, repository: Path, model: str, *, facts: RuntimeFacts, keep: int = 3,
                   server_url: str | None = None, load_timeout: float = 300.0,
                   smoke_prompt: str = "The capital of France is", instances: int = 1,
                   store: str | None = None, server_repository: str | None = None,
                   options: ServingOptions | None = None, switch: str = "side-by-side") -> Published:
    """Publish `bundle_dir` as the next version of `model`.

    `store`: the bundle store URI the bundle was released to, recorded so rollback can fetch the
    version after it was pruned. `server_repository`: the repository's path as the server sees it
    (a container mount), used in rendered paths; default: `repository`'s absolute path.
    `switch` (pipeline/gpu/schedule.py picks it): side-by-side loads the new version beside the
    serving one; drain unloads the serving one first (for models of which two copies do not fit
    on the GPUs); rolling writes the repository only (replicas restart into it one at a time).
    """
    check_name(model, "model")
    bundle = load_bundle(bundle_dir)  # every file's sha256, before anything is written
    check_compatible(bundle, facts)
    md = ModelDir(repository / model)
    existing = md.version_of(bundle.id)
    if existing is not None:
        from pipeline.tune.profiles import check_same_profile

        check_same_profile(md.version_dir(existing), bundle, options)
    previous = md.served_versions()
    if existing is not None and existing in previous and not server_url:
        history.record(md.root, existing, bundle.id, _absolute_store(store))
        return Published(model, existing, bundle.id, str(repository), previous, [], False, {}, already=True)
    if server_url:
        require_backend(server_url, bundle.backend, timeout=min(load_timeout, 60.0))
    world = int(bundle.compatibility.get("tensor_parallel") or 1) * int(bundle.compatibility.get("pipeline_parallel")
                                                                       or 1)
    if server_url and bundle.backend == "tensorrt" and world > 1:
        # the server's environment cannot be read through its API: say what it needs
        log.warning("a TP x PP = %d engine loads only on a tritonserver in TensorRT-LLM orchestrator mode "
                    "(TRTLLM_ORCHESTRATOR=1, as `trtbuild serve` and ci/k8s/triton.yaml start it)", world)
    created = existing is None
    version = existing if existing is not None else (max(md.versions(), default=0) + 1)
    if created:
        materialize_version(md, bundle, version, server_repository=server_repository,
                            options=options or ServingOptions(instances=instances))
    try:
        seconds = _serve(md, version, server_url, load_timeout, smoke_prompt, bundle.backend, switch=switch)
    except BaseException:
        if created:
            remove_version(md, version)
            if not md.versions():
                md.config_path.unlink(missing_ok=True)
        raise
    history.record(md.root, version, bundle.id, _absolute_store(store))
    pruned = prune(md, keep, protect=[version, *previous])
    return Published(model, version, bundle.id, str(repository), previous, pruned, bool(server_url), seconds,
                     already=not created)


def _absolute_store(store: str | None) -> str | None:
    """A relative file:// store (the recipe default) as an absolute URI: rollback may run elsewhere."""
    if store and store.startswith("file://"):
        from pipeline.store import open_store

        return open_store(store).uri
    return store or None


def _serve(md: ModelDir, version: int, server_url: str | None, timeout: float, prompt: str,
           backend: str, *, switch: str = "side-by-side") -> dict[str, float]:
    """Make `version` the served one: config only, or through the server (first load or switch)."""
    if switch not in SWITCHES:
        raise ServiceError(f"unknown switch strategy '{switch}'; known: {', '.join(SWITCHES)}")
    if not server_url or switch == "rolling":
        install_config(md, version)
        return {}
    from pipeline.triton.control import ModelControl
    from pipeline.triton.switch import switch_version

    control = ModelControl(server_url)
    smoke = smoke_check(server_url, md.name, prompt, backend=backend)
    new_parts = version_composing(md, version)
    if not md.config_path.is_file():
        install_config(md, version)
        try:
            control.load(md.name, timeout=timeout)  # an ensemble's composing models load with it
            control.wait_ready(md.name, version, timeout=timeout)
            smoke(version)
        except BaseException:
            _unload(control, [md.name, *new_parts])
            raise
        return {}
    old_parts = composing_models(md.config_path.read_text())
    drained_at = None
    if switch == "drain":
        # two copies do not fit on the GPUs: free them first; from here until the new version is
        # ready this server answers nothing for the model (the downtime the plan states)
        drained_at = time.monotonic()
        _unload(control, [md.name, *[n for n in old_parts if n not in new_parts]])
        control.wait_unloaded(md.name, timeout=timeout)
    try:
        result = switch_version(control, md.root.parent, md.name, version, timeout=timeout, smoke=smoke)
    except BaseException:
        _unload(control, [n for n in new_parts if n not in old_parts])
        raise
    # the previous ensemble is gone; what it routed through is not unloaded by Triton itself
    _unload(control, [n for n in old_parts if n not in new_parts])
    out = {"load": result.load_s, "ready": result.ready_s, "smoke": result.smoke_s,
           "total": result.total_s, "overhead": result.overhead_s}
    if drained_at is not None:
        out["downtime"] = round(time.monotonic() - drained_at - result.smoke_s, 3)
    return out


def _unload(control: Any, names: list[str]) -> None:
    for name in names:  # best effort: a model that never loaded has nothing to unload
        with contextlib.suppress(ServiceError):
            control.unload(name)


def rollback(repository: Path, model: str, *, server_url: str | None, to: int | None = None,
             load_timeout: float = 300.0, smoke_prompt: str = "The capital of France is",
             server_repository: str | None = None, switch: str = "side-by-side") -> Published:
    """Serve the previous (or the given) version again, through the same load/ready/smoke path
    and the same switch strategy as publish.

    A version no longer on disk is fetched from the store recorded in history.json (sha256 of
    every file verified) and re-materialized under its number; if that or the switch fails, the
    repository and what serves are left as they were.
    """
    check_name(model, "model")
    md = ModelDir(repository / model)
    served = md.served_versions()
    if not served:
        raise ServiceError(f"model '{model}' has no served version in {repository}")
    current = max(served)
    if to is None:
        older = [v for v in md.versions() if v < current]
        if not older:
            raise ServiceError(f"model '{model}' has no version older than {current} on disk to roll back to; "
                               "use --to VERSION (pruned versions come back from the store)")
        to = max(older)
    fetched = to not in md.versions()
    backend = _fetch_pruned(md, to, server_repository) if fetched else _backend_of(md, to)
    try:
        if server_url:
            require_backend(server_url, backend, timeout=min(load_timeout, 60.0))
        seconds = _serve(md, to, server_url, load_timeout, smoke_prompt, backend, switch=switch)
    except BaseException:
        if fetched:
            remove_version(md, to)
        raise
    return Published(model, to, md.bundle_id(to) or "", str(repository), served, [], bool(server_url), seconds,
                     fetched=fetched)


def _backend_of(md: ModelDir, version: int) -> str:
    from pipeline.bundle import read_manifest

    manifest, _ = read_manifest(md.version_dir(version) / "bundle")
    return str(manifest.get("backend", "reference"))


def _fetch_pruned(md: ModelDir, version: int, server_repository: str | None) -> str:
    """Bring a pruned version back from the store; returns its bundle backend."""
    from pipeline.store import open_store

    entry = history.lookup(md.root, version)
    staging = md.root.parent / f".fetch-{md.name}-{version}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        bundle_dir = open_store(entry.store or "").get(entry.bundle_id, staging / "bundle")
        bundle = load_bundle(bundle_dir, expect_id=entry.bundle_id)
        # re-rendered with default serving options: what was published with other options
        # (instances) comes back with the defaults
        materialize_version(md, bundle, version, server_repository=server_repository)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle.backend
