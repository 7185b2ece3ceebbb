"""Publish a bundle as the next Triton version, and roll back, without the old version stopping.

publish: verify the bundle, check it fits the runtime, with a server check that it has the
Triton backend the bundle needs, render and materialize it as `<model>/<N>/` (plus composing
models for an ensemble, see render.py), then either switch the live server to it (load, ready,
smoke; on any failure the previous config is restored and everything new removed, so the
repository is as it was) or, with no server, install its config. history.json records the
bundle and store of each version; older versions beyond `keep` are pruned, served ones never.

Written once against ModelRepository (base.py): the same code publishes into a directory and
into s3://bucket/prefix, and every write happens inside the repository's writer lease.

rollback: serve an older version again through the same switch. A version that was pruned comes
back from the bundle store named in history.json (every file's sha256 verified) and is
re-materialized under its own number first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.bundle import RuntimeFacts, check_compatible, load_bundle
from pipeline.errors import ServiceError
from pipeline.names import check_name
from pipeline.repository import history
from pipeline.repository.base import ModelRepository, composing_models
from pipeline.repository.render import SERVER_BACKENDS, VERSION_CONFIG, ServingOptions
from pipeline.repository.uri import open_repository

SWITCHES = ("side-by-side", "drain", "rolling")
Repository = ModelRepository | Path | str
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


def publish_bundle(bundle_dir: Path, repository: Repository, model: str, *, facts: RuntimeFacts, keep: int = 3,
                   server_url: str | None = None, load_timeout: float = 300.0,
                   smoke_prompt: str = "The capital of France is", instances: int = 1,
                   store: str | None = None, server_repository: str | None = None,
                   options: ServingOptions | None = None, switch: str = "side-by-side",
                   lease_timeout: float | None = None) -> Published:
    """Publish `bundle_dir` as the next version of `model` in `repository` (a directory,
    s3://bucket/prefix, or an open ModelRepository).

    `store`: the bundle store URI the bundle was released to, recorded so rollback can fetch the
    version after it was pruned. `server_repository`: the repository's path as the server sees it
    (a container mount), used in rendered paths; default: the repository's own absolute path.
    `lease_timeout`: how long to wait for another writer of `model` (default `load_timeout`).
    `switch` (pipeline/gpu/schedule.py picks it): side-by-side loads the new version beside the
    serving one; drain unloads the serving one first (for models of which two copies do not fit
    on the GPUs); rolling writes the repository only (replicas restart into it one at a time).
    """
    check_name(model, "model")
    repo = open_repository(repository)
    _check_switch(repo, switch)
    bundle = load_bundle(bundle_dir)  # every file's sha256, before anything is written
    check_compatible(bundle, facts)
    repo.check_bundle(bundle)
    if switch == "rolling":
        server_url = None  # replicas restart into the new version; nothing is loaded through an API
    with repo.writer(model, load_timeout if lease_timeout is None else lease_timeout):
        previous = repo.served_versions(model)
        for v in repo.versions(model):  # what a killed publish or rollback left (no manifest: never served)
            if v not in previous and repo.bundle_id(model, v) is None:
                _remove_incomplete(repo, model, v)
        existing = repo.version_of(model, bundle.id)
        if existing is not None:
            from pipeline.tune.profiles import check_same_profile

            own = repo.read_file(model, existing, VERSION_CONFIG)
            check_same_profile(own.decode() if own is not None else None, model, existing, bundle, options)
        if existing is not None and existing in previous and not server_url:
            history.record(repo, model, existing, bundle.id, _absolute_store(store))
            return Published(model, existing, bundle.id, repo.uri, previous, [], False, {}, already=True)
        if server_url:
            require_backend(server_url, bundle.backend, timeout=min(load_timeout, 60.0))
        world = (int(bundle.compatibility.get("tensor_parallel") or 1)
                 * int(bundle.compatibility.get("pipeline_parallel") or 1))
        if server_url and bundle.backend == "tensorrt" and world > 1:
            # the server's environment cannot be read through its API: say what it needs
            log.warning("a TP x PP = %d engine loads only on a tritonserver in TensorRT-LLM orchestrator mode "
                        "(TRTLLM_ORCHESTRATOR=1, as `trtbuild serve` and ci/k8s/triton.yaml start it)", world)
        created = existing is None
        version = existing if existing is not None else (max(repo.versions(model), default=0) + 1)
        had_config = repo.config(model) is not None
        if created:
            repo.materialize(model, bundle, version, server_repository=server_repository,
                             options=options or ServingOptions(instances=instances))
        try:
            seconds = _serve(repo, model, version, server_url, load_timeout, smoke_prompt, bundle.backend,
                             switch=switch, op="publish")
        except BaseException:
            if created:
                repo.remove_version(model, version, "publish.cleanup")
                if not had_config:
                    repo.delete_file("publish.cleanup", model, "config.pbtxt")
            raise
        history.record(repo, model, version, bundle.id, _absolute_store(store))
        pruned = repo.prune(model, keep, protect=[version, *previous])
    return Published(model, version, bundle.id, repo.uri, previous, pruned, bool(server_url), seconds,
                     already=not created)


DRAIN_NEEDS_ONE_SERVER = ("switch 'drain' unloads a model through one server's API; an s3:// repository is "
                          "served by replicas that poll it: use switch 'rolling' (or side-by-side if two "
                          "versions fit)")


def _check_switch(repo: ModelRepository, switch: str) -> None:
    if switch not in SWITCHES:
        raise ServiceError(f"unknown switch strategy '{switch}'; known: {', '.join(SWITCHES)}")
    if switch == "drain" and not repo.single_server:
        raise ServiceError(DRAIN_NEEDS_ONE_SERVER)


def _absolute_store(store: str | None) -> str | None:
    """A relative file:// store (the recipe default) as an absolute URI: rollback may run elsewhere."""
    if store and store.startswith("file://"):
        from pipeline.store import open_store

        return open_store(store).uri
    return store or None


def _serve(repo: ModelRepository, model: str, version: int, server_url: str | None, timeout: float, prompt: str,
           backend: str, *, switch: str = "side-by-side", op: str = "publish") -> dict[str, float]:
    """Make `version` the served one: config only, or through the server (first load or switch)."""
    if not server_url or switch == "rolling":
        repo.install_config(model, version, op)
        return {}
    from pipeline.repository.switch import switch_version
    from pipeline.triton.control import ModelControl

    control = ModelControl(server_url)
    smoke = smoke_check(server_url, model, prompt, backend=backend)
    new_parts = repo.version_composing(model, version)
    current = repo.config(model)
    if current is None:
        repo.install_config(model, version, op)
        try:
            control.load(model, timeout=timeout)  # an ensemble's composing models load with it
            control.wait_ready(model, version, timeout=timeout)
            smoke(version)
        except BaseException:
            _unload(control, [model, *new_parts])
            raise
        return {}
    old_parts = composing_models(current.decode())
    drained_at = None
    if switch == "drain":
        # two copies do not fit on the GPUs: free them first; from here until the new version is
        # ready this server answers nothing for the model (the downtime the plan states)
        drained_at = time.monotonic()
        _unload(control, [model, *[n for n in old_parts if n not in new_parts]])
        control.wait_unloaded(model, timeout=timeout)
    try:
        result = switch_version(control, repo, model, version, timeout=timeout, smoke=smoke)
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


def rollback(repository: Repository, model: str, *, server_url: str | None, to: int | None = None,
             load_timeout: float = 300.0, smoke_prompt: str = "The capital of France is",
             server_repository: str | None = None, switch: str = "side-by-side",
             lease_timeout: float | None = None) -> Published:
    """Serve the previous (or the given) version again, through the same load/ready/smoke path
    and the same switch strategy as publish.

    A version no longer in the repository is fetched from the store recorded in history.json
    (sha256 of every file verified) and re-materialized under its number; if that or the switch
    fails, the repository and what serves are left as they were.
    """
    check_name(model, "model")
    repo = open_repository(repository)
    _check_switch(repo, switch)
    with repo.writer(model, load_timeout if lease_timeout is None else lease_timeout):
        served = repo.served_versions(model)
        if not served:
            raise ServiceError(f"model '{model}' has no served version in {repo.uri}")
        current = max(served)
        versions = repo.versions(model)
        if to is None:
            older = [v for v in versions if v < current]
            if not older:
                raise ServiceError(f"model '{model}' has no version older than {current} on disk to roll back "
                                   "to; use --to VERSION (pruned versions come back from the store)")
            to = max(older)
        # a version without its manifest is what a killed write left: removed, fetched and written again
        fetched = to not in versions or repo.bundle_id(model, to) is None
        if fetched and to in versions:
            _remove_incomplete(repo, model, to)
        backend = _fetch_pruned(repo, model, to, server_repository) if fetched else repo.backend_of(model, to)
        try:
            if server_url and switch != "rolling":
                require_backend(server_url, backend, timeout=min(load_timeout, 60.0))
            seconds = _serve(repo, model, to, server_url, load_timeout, smoke_prompt, backend, switch=switch,
                             op="rollback")
        except BaseException:
            if fetched:
                repo.remove_version(model, to, "publish.cleanup")
            raise
    return Published(model, to, repo.bundle_id(model, to) or "", repo.uri, served, [],
                     bool(server_url) and switch != "rolling", seconds, fetched=fetched)


def _remove_incomplete(repo: ModelRepository, model: str, version: int) -> None:
    log.info("removing %s: an incomplete version a killed write left", repo.where(model, version))
    repo.remove_version(model, version, "publish.cleanup")


def _fetch_pruned(repo: ModelRepository, model: str, version: int, server_repository: str | None) -> str:
    """Bring a pruned version back from the store; returns its bundle backend."""
    from pipeline.store import open_store

    entry = history.lookup(repo, model, version)
    with tempfile.TemporaryDirectory(prefix=f"trtbuild-fetch-{model}-{version}-") as staging:
        bundle_dir = open_store(entry.store or "").get(entry.bundle_id, Path(staging) / "bundle")
        bundle = load_bundle(bundle_dir, expect_id=entry.bundle_id)
        # re-rendered with default serving options: what was published with other options
        # (instances) comes back with the defaults
        repo.materialize(model, bundle, version, server_repository=server_repository, op="rollback")
    return bundle.backend


def prune(repository: Repository, model: str, keep: int, *, timeout: float = 60.0) -> list[int]:
    """Remove versions beyond `keep` (oldest first), never a served one."""
    repo = open_repository(repository)
    with repo.writer(model, timeout):
        return repo.prune(model, keep, protect=repo.served_versions(model))
