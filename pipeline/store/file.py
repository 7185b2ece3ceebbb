"""A bundle store on a local (or mounted) directory: `file:///abs/dir` or `file://relative/dir`.

Same semantics as the S3 store: every file is copied to a temporary name and renamed into
place, the manifest is linked into place last with link(2), which fails if it exists (the
O_EXCL of renames), so a stored bundle is never overwritten. Stored files are made read-only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from pipeline.errors import StoreError
from pipeline.store.base import (
    BUNDLES_DIR,
    FILES_DIR,
    MANIFEST,
    BundleStore,
    FileEntry,
    TransferProgress,
    check_bundle_id,
)
from pipeline.util.hashing import sha256_file

_COPY_CHUNK = 4 << 20
_READ_ONLY = 0o444


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(src: Path, dst: Path, progress: TransferProgress) -> None:
    """Copy to a temporary beside `dst`, fsync, chmod read-only, rename over `dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dst.name}.", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            while chunk := inp.read(_COPY_CHUNK):
                out.write(chunk)
                progress.advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).chmod(_READ_ONLY)
        Path(tmp).replace(dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FileBundleStore(BundleStore):
    scheme = "file"

    def __init__(self, uri: str, *, concurrency: int = 4) -> None:
        if not uri.startswith("file://"):
            raise StoreError(f"'{uri}' is not a file:// URI")
        rest = uri[len("file://") :]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest:
            raise StoreError(
                f"store URI '{uri}' names no directory; use file:///abs/dir or file://relative/dir"
            )
        self.root = Path(rest).resolve()
        self.uri = f"file://{self.root.as_posix()}"
        self.concurrency = max(1, concurrency)

    # ---- layout
    def _bundle_dir(self, bundle_id: str) -> Path:
        return self.root / BUNDLES_DIR / check_bundle_id(bundle_id)

    def _file(self, bundle_id: str, rel: str) -> Path:
        return self._bundle_dir(bundle_id) / FILES_DIR / rel

    # ---- hooks
    def _preflight(self, op: str) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store {self.uri} is not a directory; fix TRTBUILD_STORE")
        if op == "put":
            try:
                (self.root / BUNDLES_DIR).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"cannot create store directory {self.root}: {e.strerror}"
                ) from None

    def _manifest_exists(self, bundle_id: str) -> bool:
        return (self._bundle_dir(bundle_id) / MANIFEST).is_file()

    def _present_files(self, bundle_id: str, files: tuple[FileEntry, ...]) -> set[str]:
        def ok(entry: FileEntry) -> bool:
            p = self._file(bundle_id, entry.path)
            try:
                if p.stat().st_size != entry.size:
                    return False
            except FileNotFoundError:
                return False
            return sha256_file(p) == entry.sha256

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="store-check") as pool:
            flags = list(pool.map(ok, files))
        return {f.path for f, good in zip(files, flags, strict=True) if good}

    def _upload_files(
        self,
        bundle_dir: Path,
        bundle_id: str,
        files: Iterable[FileEntry],
        progress: TransferProgress,
    ) -> None:
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="store-put") as pool:
            futs = [
                pool.submit(_copy, bundle_dir / f.path, self._file(bundle_id, f.path), progress)
                for f in files
            ]
            for fut in futs:
                fut.result()

    def _write_manifest(self, bundle_id: str, data: bytes) -> bool:
        final = self._bundle_dir(bundle_id) / MANIFEST
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{MANIFEST}.", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).chmod(_READ_ONLY)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            _fsync_dir(final.parent)
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _read_manifest(self, bundle_id: str) -> bytes:
        try:
            return (self._bundle_dir(bundle_id) / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"bundle {bundle_id[:12]} is not in {self.uri} (no manifest: never released, "
                "or its upload did not finish)"
            ) from None

    def _fetch_files(
        self, bundle_id: str, files: tuple[FileEntry, ...], dest: Path, progress: TransferProgress
    ) -> Generator[tuple[FileEntry, Path, str | None], None, None]:
        def fetch(entry: FileEntry) -> tuple[FileEntry, Path, str | None]:
            src = self._file(bundle_id, entry.path)
            if not src.is_file():
                raise StoreError(
                    f"{entry.path}: {self.object_uri(bundle_id, entry.path)} is missing from the "
                    "store although the manifest lists it; delete the bundle and release it again"
                )
            out = dest / entry.path
            _copy(src, out, progress)
            out.chmod(0o644)
            return entry, out, None  # hashed again after the copy

        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="store-get")
        futs = [pool.submit(fetch, f) for f in files]
        try:
            for fut in as_completed(futs):
                yield fut.result()
        finally:
            for fut in futs:
                fut.cancel()
            pool.shutdown(wait=True)

    def _list_ids(self) -> list[str]:
        base = self.root / BUNDLES_DIR
        if not base.is_dir():
            return []
        out = []
        for d in base.iterdir():
            try:
                check_bundle_id(d.name)
            except StoreError:
                continue
            if (d / MANIFEST).is_file():
                out.append(d.name)
        return out
