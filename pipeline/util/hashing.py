"""Content digests. Fingerprints are built from these, never from paths or mtimes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
# Files that tools drop into directories and that never count as content.
IGNORED_NAMES = frozenset({"__pycache__", ".DS_Store", ".ipynb_checkpoints"})
IGNORED_SUFFIXES = (".pyc", ".incomplete", ".lock", ".tmp")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_obj(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj))


def is_content(rel: Path) -> bool:
    if any(part in IGNORED_NAMES or part.startswith(".tmp-") for part in rel.parts):
        return False
    return not rel.name.endswith(IGNORED_SUFFIXES)


def iter_content_files(root: Path) -> Iterable[Path]:
    """Regular files under root that count as content, sorted by relative POSIX path."""
    files = [p for p in root.rglob("*") if p.is_file() and is_content(p.relative_to(root))]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def file_entries(root: Path) -> list[dict[str, Any]]:
    """[{path, size, sha256}] for every content file under root (the manifest's file list)."""
    return [
        {"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in iter_content_files(root)
    ]


def digest_dir(root: Path) -> str:
    """Digest of a directory's content: relative paths, sizes and file digests."""
    return digest_obj(file_entries(root))
