"""Reconcile a Triton model repository to a desired-state file (`trtbuild sync`).

For each model: resolve the bundle it must serve (registry version or alias -> store URI and
digest; a digest directly), then compare with what the repository serves:

    in sync             nothing to do (a second run is a no-op and says so)
    bundle on disk      switch to that version: the rollback path (load, ready, smoke, restore on failure)
    bundle not on disk  fetch it from the store (every sha256 verified) and publish it as the next version

Both changes go through pipeline/triton/publish.py, so a live server keeps the old version
serving until the new one is ready. Afterwards the repository (and the server, when given) is
checked again; a model that still differs is drift this run could not fix, and sync fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DriftError, GitOpsError, TrtbuildError
from pipeline.gitops.desired import DesiredState, ModelState

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


# --------------------------------------------------------------------------- repositories
class LocalRepo:
    """A model repository directory on this host: ModelDir plus publish/rollback."""

    def __init__(self, path: Path) -> None:
        self.root = path.resolve()
        self.where = str(self.root)

    def served(self, model: str) -> list[int]:
        from pipeline.triton.repository import ModelDir

        return ModelDir(self.root / model).served_versions()

    def bundle_id(self, model: str, version: int) -> str | None:
        from pipeline.triton.repository import ModelDir

        return ModelDir(self.root / model).bundle_id(version)

    def version_of(self, model: str, bundle_id: str) -> int | None:
        from pipeline.triton.repository import ModelDir

        return ModelDir(self.root / model).version_of(bundle_id)

    def switch(self, model: str, version: int, url: str | None, timeout: float,
               strategy: str = "side-by-side") -> dict[str, float]:
        from pipeline.triton.publish import rollback

        return rollback(self.root, model, server_url=url, to=version, load_timeout=timeout,
                        switch=strategy).seconds

    def publish(self, model: str, bundle_dir: Path, facts: Any, m: ModelState, url: str | None,
                timeout: float) -> tuple[int, dict[str, float]]:
        from pipeline.triton.publish import publish_bundle
        from pipeline.triton.render import ServingOptions

        pub = publish_bundle(bundle_dir, self.root, model, facts=facts, keep=m.keep_versions, server_url=url,
                             load_timeout=timeout, instances=m.instances, switch=m.switch,
                             options=ServingOptions(instances=m.instances, profile=m.profile))
        return pub.version, pub.seconds


class S3Repo:
    """An s3://bucket/prefix model repository (pipeline/triton/s3_repository.py)."""

    def __init__(self, uri: str) -> None:
        from pipeline.triton.s3_repository import S3ModelRepository

        self.repo = S3ModelRepository(uri)
        self.where = self.repo.uri

    def served(self, model: str) -> list[int]:
        return self.repo.served_versions(model)

    def bundle_id(self, model: str, version: int) -> str | None:
        return self.repo.bundle_id(model, version)

    def version_of(self, model: str, bundle_id: str) -> int | None:
        return self.repo.version_of(model, bundle_id)

    def switch(self, model: str, version: int, url: str | None, timeout: float,
               strategy: str = "side-by-side") -> dict[str, float]:
        from pipeline.triton.s3_repository import switch_s3

        _no_drain(strategy)
        # rolling: replicas restart into the new policy; nothing is loaded through the API
        return switch_s3(self.repo, model, version, server_url=None if strategy == "rolling" else url,
                         load_timeout=timeout)

    def publish(self, model: str, bundle_dir: Path, facts: Any, m: ModelState, url: str | None,
                timeout: float) -> tuple[int, dict[str, float]]:
        from pipeline.triton.s3_repository import publish_bundle_s3

        _no_drain(m.switch)
        if m.profile is not None:
            from pipeline.errors import ServiceError

            raise ServiceError(f"{model}: profile '{m.profile}' is not rendered into an s3:// repository yet; "
                               "leave profile out (the bundle's default profile is served) or use a directory "
                               "repository")
        url = None if m.switch == "rolling" else url
        pub = publish_bundle_s3(bundle_dir, self.repo, model, facts=facts, keep=m.keep_versions, server_url=url,
                                load_timeout=timeout, instances=m.instances)
        return pub.version, pub.seconds


def _no_drain(strategy: str) -> None:
    if strategy == "drain":
        from pipeline.errors import ServiceError

        raise ServiceError("switch 'drain' unloads a model through one server's API; an s3:// repository is "
                           "served by replicas that poll it: use switch 'rolling' (or side-by-side if two "
                           "versions fit)")


def open_repo(repository: str) -> LocalRepo | S3Repo:
    return S3Repo(repository) if repository.startswith("s3://") else LocalRepo(Path(repository))


# --------------------------------------------------------------------------- sync
def sync(state: DesiredState, *, dry_run: bool = False, server_url: str | None = None,
         cache: Path = BUNDLE_CACHE, load_timeout: float = 300.0) -> SyncResult:
    """Reconcile every model of `state`; never raises for one model's failure (see .failed)."""
    from pipeline.bundle import detect_runtime, facts_for_target
    from pipeline.registry.mlflow_registry import open_registry

    url = server_url or state.server_url
    repo = open_repo(state.repository)
    registry = open_registry(state.registry) if state.registry else None
    facts = facts_for_target(state.target) if state.target else (detect_runtime() or facts_for_target("cpu"))
    out = SyncResult(state.environment, repo.where, url, dry_run, [])
    for name, m in state.models.items():
        ms = ModelSync(name, m.selector)
        out.models.append(ms)
        try:
            _sync_model(ms, state, name, m, registry, repo, facts, url, dry_run, cache, load_timeout)
        except TrtbuildError as e:
            ms.action, ms.error = "error", e.one_line()
    return out


def _sync_model(ms: ModelSync, state: DesiredState, name: str, m: ModelState, registry: Any,
                repo: LocalRepo | S3Repo, facts: Any, url: str | None, dry_run: bool, cache: Path,
                load_timeout: float) -> None:
    r = resolve(state, name, m, registry)
    ms.bundle_id, ms.registry_version = r.bundle_id, r.registry_version
    served = repo.served(name)
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
            ms.seconds = repo.switch(name, on_disk, url, load_timeout, m.switch)
    else:
        ms.action = "publish"
        if not dry_run:
            bundle_dir = fetch_bundle(r.store, r.bundle_id, cache)
            ms.to_version, ms.seconds = repo.publish(name, bundle_dir, facts, m, url, load_timeout)
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


def _check(ms: ModelSync, repo: LocalRepo | S3Repo, url: str | None) -> None:
    """After the change: the repository, and the server when given, serve exactly the bundle."""
    v = ms.to_version
    served = repo.served(ms.model)
    if v is None or served != [v] or repo.bundle_id(ms.model, v) != ms.bundle_id:
        raise DriftError(f"after sync {repo.where} serves {ms.model} versions {served}, "
                         f"not the bundle {str(ms.bundle_id)[:12]}")
    if url and v not in _ready(url, ms.model):
        raise DriftError(f"after sync Triton at {url} does not report version {v} ready")


def raise_for_drift(result: SyncResult) -> None:
    if result.failed:
        names = ", ".join(m.model for m in result.failed)
        raise DriftError(f"{len(result.failed)} model(s) not in the desired state: {names}; see the lines above",
                         hint="fix the cause and run `trtbuild sync` again")
