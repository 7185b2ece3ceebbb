"""A stat-keyed cache of file digests (like DVC's): re-hash only files whose stat changed.

Keeps the no-op re-run cheap: a 270 MB checkpoint is not re-read to find it unchanged.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from pipeline.util import atomic
from pipeline.util.hashing import digest_obj, iter_content_files, sha256_file

_lock = threading.Lock()


class HashCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, list[object]] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}
        self.dirty = False

    def file(self, p: Path) -> str:
        st = p.stat()
        key = str(p.resolve())
        stamp: list[object] = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.data.get(key)
        if hit is not None and hit[:3] == stamp:
            return str(hit[3])
        digest = sha256_file(p)
        with _lock:
            self.data[key] = [*stamp, digest]
            self.dirty = True
        return digest

    def directory(self, root: Path) -> str:
        entries = [
            {"path": f.relative_to(root).as_posix(), "size": f.stat().st_size, "sha256": self.file(f)}
            for f in iter_content_files(root)
        ]
        return digest_obj(entries)

    def save(self) -> None:
        if self.dirty:
            atomic.write_text(self.path, json.dumps(self.data))
            self.dirty = False


def cached_file_digest(artifacts: Path, p: Path) -> str:
    hc = HashCache(artifacts / "cache" / "hashes.json")
    try:
        return hc.file(p)
    finally:
        hc.save()


def cached_dir_digest(artifacts: Path, root: Path) -> str:
    hc = HashCache(artifacts / "cache" / "hashes.json")
    try:
        return hc.directory(root)
    finally:
        hc.save()
