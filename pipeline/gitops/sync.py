"""Reconcile a Triton model repository to a desired-state file (`trtbuild sync`).

For each model: resolve the bundle it must serve (registry version or alias -> store URI and
digest; a digest directly), then compare with what the repository serves:

    in sync             nothing to do (a second run is a no-op and says so)
    bundle on disk      switch to that version: the rollback path (load, ready, smoke, restore on failure)
    bundle not on disk  fetch it from the store (every sha256 verified) and publish it as the next version

Both changes go through pipeline/repository/publish.py (one code path for a directory and for
s3://bucket/prefix, picked by open_repository), so a live server keeps the old version
serving until the new one is ready. Afterwards the repository (and the server, when given) is
checked again; a model that still differs is drift this run could not fix, and sync fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import DriftError, GitOpsError, TrtbuildError
from pipeline.gitops.desired import DesiredState, ModelState

if TYPE_CHECKING:
    from pipeline.repository.base import ModelRepository

BUNDLE_CACHE = Path("artifacts/bundles")


@dataclass(frozen=True)
class Resolved:
    bundle_id: str
    store: str  # store root the bundle is fetched from
    registry_version: int | None


@dataclass
class ModelSync:
    model: str
    want: str  # what the file asks for: "version 3", "alias 'production'", "digest 0123abcd..."
    bundle_id: str | None = None
    registry_version: int | None = None
    from_version: int | None = None
    from_bundle: str | None = None
    to_version: int | None = None
    action: str = "none"  # in-sync | load | switch | publish (with --dry-run: would-...) | error
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        def ref(v: int | None, b: str | None) -> str:
            return "nothing" if v is None else f"v{v} ({(b or '?')[:12]})"

        if self.error:
            return f"{self.model}: {self.want}: FAILED: {self.error}"
        src = ref(self.from_version, self.from_bundle)
        dst = ref(self.to_version, self.bundle_id) if self.to_version is not None else \
            f"new version ({(self.bundle_id or '?')[:12]})"
        reg = f", registry v{self.registry_version}" if self.registry_version is not None else ""
        if self.action == "in-sync":
            return f"{self.model}: in sync, serving {src} = {self.want}{reg}"
        return f"{self.model}: {self.action}: {src} -> {dst} ({self.want}{reg})"


@dataclass
class SyncResult:
    environment: str
    repository: str
    server_url: str | None
    dry_run: bool
    models: list[ModelSync]

    @property
    def changed(self) -> bool:
        return any(m.action not in ("in-sync", "error") for m in self.models)

    @property
    def failed(self) -> list[ModelSync]:
        return [m for m in self.models if m.error]

    def to_json(self) -> dict[str, Any]:
        return {"environment": self.environment, "repository": self.repository, "server_url": self.server_url,
                "dry_run": self.dry_run, "changed": self.changed, "in_sync": not self.changed and not self.failed,
                "models": [asdict(m) for m in self.models]}


# --------------------------------------------------------------------------- resolve
def resolve(state: DesiredState, name: str, m: ModelState, registry: Any) -> Resolved:
    """The bundle id and store of one model's desired bundle."""
    if m.digest is not None and state.store is not None:
        return Resolved(m.digest, state.store, None)
    if registry is None or m.registered_model is None:
        raise GitOpsError(f"models.{name}: a digest without store needs registry and registered_model "
                          "to find where the bundle is stored")
    model = m.registered_model
    if m.digest is not None:
        version = registry.find_version(model, m.digest)
        if version is None:
            raise GitOpsError(f"models.{name}: no version of '{model}' in {registry.uri} has digest "
                              f"{m.digest[:12]}; `trtbuild list {model}` shows the digests")
    elif m.alias is not None:
        version = registry.get_alias(model, m.alias)
        if version is None:
            raise GitOpsError(f"models.{name}: '{model}' has no alias '{m.alias}' in {registry.uri}",
                              hint=f"set it with `trtbuild promote {model} --version N`")
    else:
        version = m.version
    source, digest = registry.version_source(model, int(version))
    if not digest:
        raise GitOpsError(f"models.{name}: {model} v{version} has no bundle_digest tag; it was not "
                          "released by trtbuild")
    if m.digest is not None and digest != m.digest:
        raise GitOpsError(f"models.{name}: {model} v{version} is tagged {digest[:12]}, not {m.digest[:12]}")
    return Resolved(digest, state.store or _store_root(source, digest, f"{model} v{version}"), int(version))


def _store_root(source: str, bundle_id: str, what: str) -> str:
    from pipeline.store.base import BUNDLES_DIR

    suffix = f"/{BUNDLES_DIR}/{bundle_id}"
    if not source.rstrip("/").endswith(suffix):
        raise GitOpsError(f"{what}: its source {source} is not a trtbuild store URI (…{suffix}); "
                          "set store in the desired-state file")
    return source.rstrip("/")[: -len(suffix)]


def fetch_bundle(store_uri: str, bundle_id: str, cache: Path) -> Path:
    """The bundle in the local cache, downloaded (and verified) if it is not there yet.

    publish_bundle verifies every file's sha256 again before it writes anything, so a cached
    copy that changed on disk is refused there rather than trusted here.
    """
    from pipeline.store import open_store

    dest = cache / bundle_id
    if (dest / "manifest.json").is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    return open_store(store_uri).get(bundle_id, dest)


# --------------------------------------------------------------------------- sync
def sync(state: DesiredState, *, dry_run: bool = False, server_url: str | None = None,
         cache: Path = BUNDLE_CACHE, load_timeout: float = 300.0, lease_timeout: float | None = None) -> SyncResult:
    """Reconcile every model of `state`; never raises for one model's failure (see .failed)."""
    from pipeline.bundle import detect_runtime, facts_for_target
    from pipeline.registry.mlflow_registry import open_registry
    from pipeline.repository import open_repository

    url = server_url or state.server_url
    repo = open_repository(state.repository if state.repository.startswith("s3://")
                           else Path(state.repository).resolve())
    registry = open_registry(state.registry) if state.registry else None
    facts = facts_for_target(state.target) if state.target else (detect_runtime() or facts_for_target("cpu"))
    out = SyncResult(state.environment, repo.uri, url, dry_run, [])
    for name, m in state.models.items():
        ms = ModelSync(name, m.selector)
        out.models.append(ms)
        try:
            # one writer per model, around all of its changes; another sync of it waits, then
            # sees what that one did (in-sync) instead of applying the same change twice
            with repo.writer(name, load_timeout if lease_timeout is None else lease_timeout):
                _sync_model(ms, state, name, m, registry, repo, facts, url, dry_run, cache, load_timeout)
        except TrtbuildError as e:
            ms.action, ms.error = "error", e.one_line()
    return out


def _sync_model(ms: ModelSync, state: DesiredState, name: str, m: ModelState, registry: Any,
                repo: ModelRepository, facts: Any, url: str | None, dry_run: bool, cache: Path,
                load_timeout: float) -> None:
    r = resolve(state, name, m, registry)
    ms.bundle_id, ms.registry_version = r.bundle_id, r.registry_version
    served = repo.served_versions(name)
    if served:
        ms.from_version = max(served)
        ms.from_bundle = repo.bundle_id(name, ms.from_version)
    on_disk = repo.version_of(name, r.bundle_id)
    ms.to_version = on_disk
    if on_disk is not None and served == [on_disk]:
        ms.action = "in-sync"
        if url and on_disk not in _ready(url, name):
            ms.action = "load"  # right in the repository, not serving (a restarted server): load it
            if not dry_run:
                _load(url, name, on_disk, load_timeout)
    elif on_disk is not None:
        ms.action = "switch"  # the rollback path: that bundle is already a version here
        if not dry_run:
            from pipeline.repository.publish import rollback

            ms.seconds = rollback(repo, name, server_url=url, to=on_disk, load_timeout=load_timeout,
                                  switch=m.switch).seconds
    else:
        ms.action = "publish"
        if not dry_run:
            bundle_dir = fetch_bundle(r.store, r.bundle_id, cache)
            from pipeline.repository.publish import publish_bundle
            from pipeline.repository.render import ServingOptions

            pub = publish_bundle(bundle_dir, repo, name, facts=facts, keep=m.keep_versions, server_url=url,
                                 load_timeout=load_timeout, instances=m.instances, switch=m.switch,
                                 options=ServingOptions(instances=m.instances, profile=m.profile))
            ms.to_version, ms.seconds = pub.version, pub.seconds
    if dry_run:
        if ms.action != "in-sync":
            ms.action = f"would-{ms.action}"
        return
    _check(ms, repo, url)


def _ready(url: str, model: str) -> list[int]:
    from pipeline.triton.control import ModelControl

    return ModelControl(url).ready_versions(model)


def _load(url: str, model: str, version: int, timeout: float) -> None:
    from pipeline.triton.control import ModelControl

    control = ModelControl(url)
    control.load(model, timeout=timeout)
    control.wait_ready(model, version, timeout=timeout)


def _check(ms: ModelSync, repo: ModelRepository, url: str | None) -> None:
    """After the change: the repository, and the server when given, serve exactly the bundle."""
    v = ms.to_version
    served = repo.served_versions(ms.model)
    if v is None or served != [v] or repo.bundle_id(ms.model, v) != ms.bundle_id:
        raise DriftError(f"after sync {repo.uri} serves {ms.model} versions {served}, "
                         f"not the bundle {str(ms.bundle_id)[:12]}")
    if url and v not in _ready(url, ms.model):
        raise DriftError(f"after sync Triton at {url} does not report version {v} ready")


def raise_for_drift(result: SyncResult) -> None:
    if result.failed:
        names = ", ".join(m.model for m in result.failed)
        raise DriftError(f"{len(result.failed)} model(s) not in the desired state: {names}; see the lines above",
                         hint="fix the cause and run `trtbuild sync` again")
