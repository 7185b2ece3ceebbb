"""The bundle store interface, the content-addressed layout, and the scheme registry.

Layout under a store root (an S3 prefix or a directory), the same for every implementation:

    <root>/bundles/<bundle_id>/files/<path>       every file the manifest lists
    <root>/bundles/<bundle_id>/manifest.json      written LAST

A bundle whose manifest is absent does not exist: an interrupted `put` leaves files behind that
the next `put` of the same bundle reuses (only missing or different files go up again). The
bundle id is the sha256 of the manifest bytes, so a stored manifest is checked against its own
name, and every file against the manifest, on the way down.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import json
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Protocol

from pipeline.errors import IntegrityError, StoreError
from pipeline.util import atomic
from pipeline.util.hashing import iter_content_files, sha256_bytes, sha256_file

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
KIND = "trtbuild.bundle"
BUNDLES_DIR = "bundles"
FILES_DIR = "files"
_ID_RE = re.compile(r"[0-9a-f]{64}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The parts of a bundle manifest the store needs, and its exact bytes."""

    id: str
    data: bytes
    name: str
    backend: str
    files: tuple[FileEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def check_bundle_id(bundle_id: str) -> str:
    if not isinstance(bundle_id, str) or not _ID_RE.fullmatch(bundle_id):
        raise StoreError(f"'{bundle_id}' is not a bundle id (the 64-hex sha256 of a manifest.json)")
    return bundle_id


def _safe_rel(path: object, where: str) -> str:
    """A manifest path must stay inside the bundle: relative, POSIX, no '..', no empty parts."""
    if not isinstance(path, str) or not path:
        raise IntegrityError(f"{where}: a file entry has no path")
    p = PurePosixPath(path)
    if (
        p.is_absolute()
        or "\\" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
        or path == MANIFEST
    ):
        raise IntegrityError(
            f"{where}: file path '{path}' is not a plain relative path inside the bundle"
        )
    return path


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse and check a manifest's shape. `where` names it in errors (a path or a URI)."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise IntegrityError(f"{where}: not a trtbuild bundle manifest (kind must be '{KIND}')")
    if obj.get("schema_version") != MANIFEST_SCHEMA:
        raise IntegrityError(
            f"{where}: manifest schema_version {obj.get('schema_version')!r} is not supported "
            f"(this trtbuild reads {MANIFEST_SCHEMA}); upgrade trtbuild"
        )
    raw_files = obj.get("files")
    if not isinstance(raw_files, list):
        raise IntegrityError(f"{where}: 'files' must be a list")
    files: list[FileEntry] = []
    seen: set[str] = set()
    for raw in raw_files:
        if not isinstance(raw, dict):
            raise IntegrityError(f"{where}: every entry of 'files' must be an object")
        path = _safe_rel(raw.get("path"), where)
        size, digest = raw.get("size"), raw.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IntegrityError(f"{where}: {path}: size must be a non-negative integer")
        if not isinstance(digest, str) or not _HEX_RE.fullmatch(digest):
            raise IntegrityError(f"{where}: {path}: sha256 must be 64 lowercase hex digits")
        if path in seen:
            raise IntegrityError(f"{where}: {path} is listed twice")
        seen.add(path)
        files.append(FileEntry(path, size, digest))
    return Manifest(
        id=sha256_bytes(data),
        data=data,
        name=str(obj.get("name", "")),
        backend=str(obj.get("backend", "")),
        files=tuple(files),
    )


def read_local_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(
            f"{bundle_dir}: no {MANIFEST}; not a bundle (or an unfinished build)"
        ) from None
    return parse_manifest(data, str(path))


def hash_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def check_local_layout(bundle_dir: Path, manifest: Manifest) -> None:
    """Cheap checks first: every listed file is there with its size, nothing unlisted is."""
    listed = {f.path for f in manifest.files}
    for p in iter_content_files(bundle_dir):
        rel = p.relative_to(bundle_dir).as_posix()
        if rel != MANIFEST and rel not in listed:
            raise IntegrityError(
                f"{bundle_dir}: {rel} is not listed in {MANIFEST}; a bundle is immutable: "
                "rebuild it (or remove the stray file)"
            )
    for entry in manifest.files:
        p = bundle_dir / entry.path
        if not p.is_file():
            raise IntegrityError(f"{bundle_dir}: {entry.path} is missing (listed in {MANIFEST})")
        size = p.stat().st_size
        if size != entry.size:
            raise IntegrityError(
                f"{bundle_dir}: {entry.path} has {size} bytes, {MANIFEST} says {entry.size}; "
                "the bundle changed after it was built: rebuild it"
            )


def check_local_file(bundle_dir: Path, entry: FileEntry) -> None:
    if sha256_file(bundle_dir / entry.path) != entry.sha256:
        raise IntegrityError(
            f"{bundle_dir}: {entry.path} does not match its sha256 in {MANIFEST}; "
            "the bundle changed after it was built: rebuild it"
        )


def verify_local_bundle(bundle_dir: Path, manifest: Manifest) -> None:
    """Every listed file has its size and sha256, and nothing unlisted is there."""
    check_local_layout(bundle_dir, manifest)
    with ThreadPoolExecutor(hash_workers(), thread_name_prefix="verify") as pool:
        for fut in [pool.submit(check_local_file, bundle_dir, e) for e in manifest.files]:
            fut.result()


# --------------------------------------------------------------------------- progress
class TransferProgress(Protocol):
    """Byte progress of one put or get. `advance` is called from worker threads."""

    def start(self, total_bytes: int, description: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...


class RichTransferProgress:
    """Adapts a `rich.progress.Progress` (thread-safe) to TransferProgress: a task per transfer."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, total_bytes: int, description: str) -> None:
        self._task = self._progress.add_task(description, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, advance=nbytes)


class _NoProgress:
    def start(self, total_bytes: int, description: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass


class ByteCounter:
    """A thread-safe TransferProgress that only counts (tests, benchmarks, summaries)."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self._lock = threading.Lock()

    def start(self, total_bytes: int, description: str) -> None:
        self.total = total_bytes

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes


# --------------------------------------------------------------------------- interface
@dataclass(frozen=True)
class StoredBundle:
    """What a put did. `already_stored`: the manifest was there, nothing was written."""

    uri: str
    bundle_id: str
    uploaded_bytes: int
    skipped_files: int
    uploaded_files: int = 0
    already_stored: bool = False
    aborted_uploads: int = 0  # incomplete multipart uploads of interrupted puts, cleaned up


class BundleStore(ABC):
    """Immutable, content-addressed bundle storage. Implementations register a URI scheme."""

    scheme: ClassVar[str]
    uri: str

    # ---- public API
    def put(self, bundle_dir: Path, progress: TransferProgress | None = None) -> StoredBundle:
        """Store a bundle directory: verify it, upload what is missing, write the manifest last.

        Each file's sha256 is checked before that file goes up; hashing runs ahead of the upload
        in a thread pool, so verification overlaps the transfer instead of preceding all of it.
        A bundle whose manifest is already stored is a no-op (nothing is read or written).
        """
        bundle_dir = Path(bundle_dir)
        manifest = read_local_manifest(bundle_dir)
        check_local_layout(bundle_dir, manifest)
        self._preflight("put")
        started = time.time()
        uri = self.uri_for(manifest.id)
        if self._manifest_exists(manifest.id):
            return StoredBundle(uri, manifest.id, 0, len(manifest.files), 0, already_stored=True,
                                aborted_uploads=self._abort_interrupted(manifest.id, started))
        present = self._present_files(manifest.id, manifest.files)
        missing = [f for f in manifest.files if f.path not in present]
        prog = progress or _NoProgress()
        prog.start(sum(f.size for f in missing), f"put {manifest.name or manifest.id[:12]}")
        pool = ThreadPoolExecutor(hash_workers(), thread_name_prefix="verify")
        try:
            # Missing files first: their uploads start as soon as each one is verified.
            checks = [(f, pool.submit(check_local_file, bundle_dir, f)) for f in missing]
            rest = [
                pool.submit(check_local_file, bundle_dir, f)
                for f in manifest.files
                if f.path in present
            ]

            def verified() -> Iterator[FileEntry]:
                for entry, fut in checks:
                    fut.result()
                    yield entry

            self._upload_files(bundle_dir, manifest.id, verified(), prog)
            for fut in rest:
                fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        created = self._write_manifest(manifest.id, manifest.data)
        return StoredBundle(
            uri,
            manifest.id,
            sum(f.size for f in missing),
            len(present),
            len(missing),
            already_stored=not created,
            aborted_uploads=self._abort_interrupted(manifest.id, started),
        )

    def _abort_interrupted(self, bundle_id: str, before: float) -> int:
        """Clean up what killed puts of this bundle left half-uploaded; the count.

        Called once the bundle is complete, for uploads begun before this put: those belong to
        puts that died (or to a concurrent put of the same digest, which is now redundant).
        Stores without partial uploads have nothing to do.
        """
        return 0

    def get(self, bundle_id: str, dest_dir: Path, progress: TransferProgress | None = None) -> Path:
        """Download a bundle into `dest_dir` (created by rename once every file verified)."""
        check_bundle_id(bundle_id)
        dest = Path(dest_dir)
        self._preflight("get")
        data = self._read_manifest(bundle_id)
        where = f"{self.uri_for(bundle_id)}/{MANIFEST}"
        if sha256_bytes(data) != bundle_id:
            raise IntegrityError(
                f"{where}: its sha256 is not the bundle id; the stored manifest is corrupted: "
                "delete the bundle from the store and release it again"
            )
        manifest = parse_manifest(data, where)
        _check_dest(dest, data)
        prog = progress or _NoProgress()
        prog.start(manifest.total_bytes, f"get {manifest.name or bundle_id[:12]}")
        with atomic.staged_dir(dest) as tmp:
            for entry in manifest.files:
                (tmp / entry.path).parent.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(hash_workers(), thread_name_prefix="verify") as pool:
                checks: list[Future[None]] = []
                fetched = self._fetch_files(bundle_id, manifest.files, tmp, prog)
                try:
                    for entry, path, digest in fetched:
                        checks.append(pool.submit(self._verify_fetched, bundle_id, entry, path, digest))
                        _raise_first_failure(checks)
                except BaseException:
                    fetched.close()  # stops in-flight downloads when a check failed early
                    for fut in checks:
                        fut.cancel()
                    raise
                for fut in checks:
                    fut.result()
            (tmp / MANIFEST).write_bytes(data)
        return dest

    def exists(self, bundle_id: str) -> bool:
        check_bundle_id(bundle_id)
        self._preflight("exists")
        return self._manifest_exists(bundle_id)

    def list(self) -> list[str]:
        """Ids of the complete bundles (those with a manifest), sorted."""
        self._preflight("list")
        return sorted(self._list_ids())

    def uri_for(self, bundle_id: str) -> str:
        check_bundle_id(bundle_id)
        return f"{self.uri.rstrip('/')}/{BUNDLES_DIR}/{bundle_id}"

    def object_uri(self, bundle_id: str, path: str) -> str:
        return f"{self.uri_for(bundle_id)}/{FILES_DIR}/{path}"

    # ---- what an implementation provides
    def _preflight(self, op: str) -> None:  # noqa: B027 - optional hook
        """Check the store is reachable and usable; raise one clear StoreError if not."""

    @abstractmethod
    def _manifest_exists(self, bundle_id: str) -> bool: ...

    @abstractmethod
    def _present_files(self, bundle_id: str, files: tuple[FileEntry, ...]) -> set[str]:
        """Paths already stored with the manifest's size and sha256 (reused by a resumed put)."""

    @abstractmethod
    def _upload_files(
        self,
        bundle_dir: Path,
        bundle_id: str,
        files: Iterable[FileEntry],
        progress: TransferProgress,
    ) -> None:
        """Upload `files`, consumed lazily: each one is yielded once its sha256 is verified."""

    @abstractmethod
    def _write_manifest(self, bundle_id: str, data: bytes) -> bool:
        """Write the manifest if absent, never overwrite. False: it was already there."""

    @abstractmethod
    def _read_manifest(self, bundle_id: str) -> bytes:
        """The stored manifest bytes; StoreError naming the bundle if it is not stored."""

    @abstractmethod
    def _fetch_files(
        self, bundle_id: str, files: tuple[FileEntry, ...], dest: Path, progress: TransferProgress
    ) -> Generator[tuple[FileEntry, Path, str | None], None, None]:
        """Download every file under `dest`; yield each one as it completes (then verified).

        The third item is the sha256 of the bytes written, when the store hashed them on the way
        in (one pass over the data); None has the file read again and hashed after.
        """

    @abstractmethod
    def _list_ids(self) -> builtins.list[str]: ...

    # ---- shared helpers
    def _verify_fetched(self, bundle_id: str, entry: FileEntry, path: Path, digest: str | None = None) -> None:
        size = path.stat().st_size
        if size != entry.size:
            raise IntegrityError(
                f"{entry.path}: {self.object_uri(bundle_id, entry.path)} has {size} bytes, "
                f"the manifest says {entry.size}; the stored copy is damaged: delete the "
                "bundle from the store and release it again"
            )
        if (digest if digest is not None else sha256_file(path)) != entry.sha256:
            raise IntegrityError(
                f"{entry.path}: {self.object_uri(bundle_id, entry.path)} does not match its "
                "sha256 in the manifest; the stored copy is damaged: delete the bundle from "
                "the store and release it again"
            )


def _raise_first_failure(futures: list[Future[None]]) -> None:
    for fut in futures:
        if fut.done() and fut.exception() is not None:
            fut.result()


def _check_dest(dest: Path, manifest_data: bytes) -> None:
    """`dest` must be absent, empty, or an earlier copy of the same bundle (then replaced)."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise StoreError(f"{dest} exists and is not a directory; choose another destination")
    if not any(dest.iterdir()):
        return
    mf = dest / MANIFEST
    if mf.is_file() and mf.read_bytes() == manifest_data:
        return
    raise StoreError(
        f"{dest} is not empty and holds no copy of this bundle; choose another destination "
        "or remove it"
    )


# --------------------------------------------------------------------------- scheme registry
_SCHEMES: dict[str, str | Callable[..., BundleStore]] = {
    "s3": "pipeline.store.s3:S3BundleStore",
    "file": "pipeline.store.file:FileBundleStore",
}


def register_scheme(scheme: str, factory: str | Callable[..., BundleStore]) -> None:
    """Register a store implementation: a callable `(uri, **options)` or a 'module:attr' path."""
    _SCHEMES[scheme] = factory


def known_schemes() -> list[str]:
    return sorted(_SCHEMES)


def open_store(uri: str, **options: Any) -> BundleStore:
    """The store for `uri` (s3://bucket/prefix, file:///abs/dir, file://relative/dir)."""
    scheme, sep, _ = uri.partition("://")
    if not sep or scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in known_schemes())
        raise StoreError(f"store URI '{uri}' has an unknown scheme; known schemes: {known}")
    factory = _SCHEMES[scheme]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise StoreError(
                f"{scheme}:// store has no option {', '.join(unknown)}; "
                f"options: {', '.join(accepted) or 'none'}"
            )
    return factory(uri, **options)
