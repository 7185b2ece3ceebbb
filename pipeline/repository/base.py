"""One interface over a Triton model repository, wherever it lives (a directory, S3).

    repo = open_repository("triton_repo")              # or s3://bucket/prefix (uri.py)
    repo.versions("llm"), repo.served_versions("llm"), repo.bundle_id("llm", 3)
    with repo.writer("llm", timeout=60):
        repo.materialize("llm", bundle, 4)             # the version, rendered from its manifest
        repo.install_config("llm", 4, "publish")      # config.pbtxt now serves it

A backend (local.py, s3.py) implements a handful of primitives: list versions, read a file of a
model, and the few methods that write (write_file, write_version, write_model, remove_tree),
each of which calls failpoints.step() with the step's name before it writes. Everything else
(what a version is, which versions serve, which bundle a version holds, materializing, config
install, prune, removal with composing models) is written here once, and publish / switch /
rollback / sync (publish.py, switch.py, pipeline/gitops/sync.py) use only this interface.

Layout, the same on every backend:

    <root>/<model>/config.pbtxt                the served config (version_policy names the versions)
    <root>/<model>/history.json                bundle and store of each version (history.py)
    <root>/<model>/<N>/bundle/...              the bundle, manifest.json included
    <root>/<model>/<N>/trtbuild.config.pbtxt   version N's own config (VERSION_CONFIG)
    <root>/<model>_v<N>_<role>/                composing models of an ensemble version (render.py)
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.bundle import Bundle
from pipeline.errors import TrtbuildError
from pipeline.repository import failpoints, pbtxt
from pipeline.repository.lease import Lease, held, lease_ttl, waiting_line
from pipeline.repository.render import BUNDLE_DIR, VERSION_CONFIG, ServingOptions, render_version
from pipeline.util.hashing import sha256_bytes

CONFIG = "config.pbtxt"
log = logging.getLogger(__name__)


class RepositoryError(TrtbuildError):
    """A model repository is malformed or a version cannot be written."""


def render_config(config: dict[str, Any]) -> str:
    """dict (ModelConfig JSON field names) -> config.pbtxt text; refuses unknown fields and placeholders."""
    return pbtxt.render_pbtxt(config)


def parse_config(text: str) -> Any:
    return pbtxt.parse_pbtxt(text)


def composing_models(config_text: str) -> list[str]:
    """Names of the models an ensemble config routes through (empty for any other model)."""
    cfg = parse_config(config_text)
    return [step.model_name for step in cfg.ensemble_scheduling.step]


class ModelRepository(ABC):
    """A Triton model repository. Subclasses: DirectoryRepository (local.py), S3Repository (s3.py)."""

    kind: str = ""  # "directory" | "s3"
    uri: str = ""  # what messages and results name
    # drain unloads the serving version through one server's API before loading the new one;
    # a repository that replicas poll (S3) has no single server to drain
    single_server: bool = True

    def __init__(self) -> None:
        self._held: dict[str, int] = {}  # writer() re-entrancy: model -> depth, per thread
        self._active: dict[str, Lease] = {}  # the leases writer() holds: "thread:model" -> lease
        self._held_lock = threading.Lock()

    # ------------------------------------------------------------------ backend primitives
    @abstractmethod
    def triton_uri(self) -> str:
        """The --model-repository value tritonserver needs for this repository."""

    @abstractmethod
    def versions(self, model: str) -> list[int]:
        """Version numbers present for `model`, ascending."""

    @abstractmethod
    def read_file(self, model: str, *parts: str | int) -> bytes | None:
        """Bytes of `<model>/<parts...>`, or None when it does not exist."""

    @abstractmethod
    def exists(self, model: str, *parts: str | int) -> bool:
        """Whether `<model>/<parts...>` holds anything (a file, or a directory / prefix with files)."""

    @abstractmethod
    def write_file(self, step: str, data: bytes, model: str, *parts: str) -> None:
        """Replace one file atomically (config.pbtxt, history.json)."""

    @abstractmethod
    def delete_file(self, step: str, model: str, *parts: str) -> None: ...

    @abstractmethod
    def write_version(self, step: str, model: str, version: int, bundle_dir: Path, files: dict[str, str]) -> None:
        """`<model>/<version>/`: the bundle's files under bundle/, then `files` (relative path -> text)."""

    @abstractmethod
    def write_model(self, step: str, name: str, version: int, config_text: str, files: dict[str, str]) -> None:
        """A whole (composing) model: `<name>/<version>/<files>`, then `<name>/config.pbtxt` last."""

    @abstractmethod
    def remove_tree(self, step: str, model: str, *parts: str | int) -> None:
        """Delete `<model>/<parts...>` and everything under it (nothing there: no error)."""

    @abstractmethod
    def where(self, model: str, *parts: str | int) -> str:
        """`<model>/<parts...>` as a path or URI for messages."""

    def served_root(self, server_repository: str | None) -> str:
        """The repository's root as the server sees it (rendered configs hold absolute paths)."""
        return (server_repository or self.uri).rstrip("/")

    def check_bundle(self, bundle: Bundle) -> None:
        """Refuse, before anything is written, a bundle this backend cannot serve (default: none)."""
        del bundle  # every backend serves every layout unless it says otherwise

    def local_version_dir(self, model: str, version: int) -> Path | None:
        """The directory a python stub of `version` runs from on this host (to end a hung load)."""
        return None

    @abstractmethod
    def lease(self, model: str) -> Lease:
        """The writer lease of `model` in this repository (lease.py: a flock'd file, an S3 object)."""

    # ------------------------------------------------------------------ the writer lease
    @contextlib.contextmanager
    def writer(self, model: str, timeout: float) -> Iterator[None]:
        """Held around every write to `model` (publish, switch, rollback, prune, sync): the model's
        writer lease, waited for up to `timeout` s (then LeaseHeld names the holder), renewed while
        held. Re-entrant within a thread, so publish -> switch and sync -> publish take it once."""
        key = f"{threading.get_ident()}:{model}"
        with self._held_lock:
            depth = self._held.get(key, 0)
            self._held[key] = depth + 1
        try:
            if depth:
                yield
            else:
                ttl = lease_ttl()  # a bad TRTBUILD_LEASE_TTL fails before anything is created
                lease = self.lease(model)
                with held(lease, timeout=timeout, ttl=ttl, on_wait=lambda h, waited: log.warning(
                        "%s", waiting_line(model, h, waited))):
                    with self._held_lock:
                        self._active[key] = lease
                    try:
                        yield
                    finally:
                        with self._held_lock:
                            self._active.pop(key, None)
        finally:
            with self._held_lock:
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key]

    def _write_step(self, step: str) -> None:
        """Before each write: the fault-injection point, then the fence: a writer whose lease was
        lost (expired while it stalled, taken over) stops before it writes anything more."""
        failpoints.step(step)
        mine = f"{threading.get_ident()}:"
        with self._held_lock:
            leases = [lease for key, lease in self._active.items() if key.startswith(mine)]
        for lease in leases:
            lease.check()

    # ------------------------------------------------------------------ reading (written once)
    def config(self, model: str) -> bytes | None:
        return self.read_file(model, CONFIG)

    def served_versions(self, model: str) -> list[int]:
        """The versions the config's version_policy names."""
        data = self.config(model)
        if data is None:
            return []
        cfg = parse_config(data.decode())
        if cfg.version_policy.WhichOneof("policy_choice") == "specific":
            return sorted(cfg.version_policy.specific.versions)
        return self.versions(model)[-1:]

    def bundle_id(self, model: str, version: int) -> str | None:
        data = self.read_file(model, version, BUNDLE_DIR, "manifest.json")
        return sha256_bytes(data) if data is not None else None

    def version_of(self, model: str, bundle_id: str) -> int | None:
        return next((v for v in self.versions(model) if self.bundle_id(model, v) == bundle_id), None)

    def backend_of(self, model: str, version: int) -> str:
        data = self.read_file(model, version, BUNDLE_DIR, "manifest.json")
        return str(json.loads(data or b"{}").get("backend", "reference"))

    def version_config_text(self, model: str, version: int) -> str | None:
        """The config.pbtxt that serves exactly `version` (its own rendered config, policy = [version]);
        None for a version written before configs were kept per version."""
        data = self.read_file(model, version, VERSION_CONFIG)
        return None if data is None else pbtxt.with_version_policy(data.decode(), specific=[version])

    def version_composing(self, model: str, version: int) -> list[str]:
        data = self.read_file(model, version, VERSION_CONFIG)
        return composing_models(data.decode()) if data is not None else []

    def describe(self, model: str) -> dict[str, Any]:
        return {"model": model, "versions": {v: self.bundle_id(model, v) for v in self.versions(model)},
                "served": self.served_versions(model)}

    # ------------------------------------------------------------------ writing (written once)
    def write_config(self, model: str, data: bytes, step: str) -> None:
        self.write_file(step, data, model, CONFIG)

    def materialize(self, model: str, bundle: Bundle, version: int, *, server_repository: str | None = None,
                    options: ServingOptions | None = None, op: str = "publish") -> None:
        """Write version `version` of `model`: the bundle, the rendered files, this version's config
        (VERSION_CONFIG) and, for an ensemble, its composing models, these first: a version exists
        only once everything it routes through exists. Nothing is left behind on failure.
        `server_repository`: the repository's root as the server sees it (default: this one's)."""
        self.check_bundle(bundle)
        if self.exists(model, version):
            raise RepositoryError(f"{self.where(model, version)} already exists; versions are immutable")
        rendered = render_version(model, bundle, version, options=options,
                                  version_dir=f"{self.served_root(server_repository)}/{model}/{version}")
        for m in rendered.all():  # before anything is written
            pbtxt.check_no_placeholders(m.config)
            for rel, text in m.files.items():
                found = pbtxt.find_placeholders(text)
                if found:
                    raise pbtxt.ModelConfigError(f"{m.name}/{version}/{rel}: unresolved template placeholders: "
                                                 + "; ".join(found))
        created: list[str] = []
        try:
            for m in rendered.composing:
                if self.exists(m.name):
                    # named <model>_v<N>_<role>: only version N of this model routes through it, and
                    # that version does not exist, so it is what an interrupted publish left behind
                    self.remove_tree("publish.cleanup", m.name)
                created.append(m.name)
                self.write_model(f"{op}.composing", m.name, version, render_config(m.config), m.files)
            self.write_version(f"{op}.version_files", model, version, bundle.dir,
                               {**rendered.main.files, VERSION_CONFIG: render_config(rendered.main.config)})
        except BaseException:
            self.remove_tree("publish.cleanup", model, version)  # an object store has no staged rename
            for name in created:
                self.remove_tree("publish.cleanup", name)
            raise

    def install_config(self, model: str, version: int, op: str = "publish") -> None:
        """Make config.pbtxt serve `version` (no server involved)."""
        text = self.version_config_text(model, version)
        if text is None:
            current = self.config(model)
            if current is None:
                raise RepositoryError(f"{self.where(model, version)} has no {VERSION_CONFIG} and the model has no "
                                      f"{CONFIG}; republish the bundle")
            text = pbtxt.with_version_policy(current.decode(), specific=[version])
        self.write_config(model, text.encode(), f"{op}.config")

    def remove_version(self, model: str, version: int, step: str = "prune.remove") -> None:
        """Delete a version and the composing models it routes through."""
        composing = self.version_composing(model, version)
        self.remove_tree(step, model, version)  # first: the version is gone, then its parts
        for name in composing:
            self.remove_tree(step, name)

    def prune(self, model: str, keep: int, protect: list[int]) -> list[int]:
        """Remove the oldest versions beyond `keep`, never one in `protect`, with their composing models."""
        removed = []
        versions = self.versions(model)
        for v in versions[: max(0, len(versions) - keep)]:
            if v in protect:
                continue
            self.remove_version(model, v)
            removed.append(v)
        return removed
