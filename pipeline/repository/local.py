"""A model repository in a directory on this host.

Every write is a rename: a version or composing model directory is written under a temporary
name and renamed (atomic.staged_dir), a file by temporary file + rename with its mode kept, so a
server that scans the directory at any moment never sees half of anything. The bundle is
hard-linked into the version when it is on the same filesystem (bundles are immutable).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.repository.base import CONFIG, ModelRepository
from pipeline.repository.lease import DirLease, Lease
from pipeline.repository.render import BUNDLE_DIR
from pipeline.util import atomic
from pipeline.util.files import link_tree


class DirectoryRepository(ModelRepository):
    kind = "directory"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, model: str, *parts: str | int) -> Path:
        return self.root.joinpath(model, *(str(p) for p in parts))

    def triton_uri(self) -> str:
        return str(self.root.resolve())

    def where(self, model: str, *parts: str | int) -> str:
        return str(self._path(model, *parts))

    def served_root(self, server_repository: str | None) -> str:
        return (server_repository or str(self.root.resolve())).rstrip("/")

    def local_version_dir(self, model: str, version: int) -> Path | None:
        return self._path(model, version)

    def lease(self, model: str) -> Lease:
        self.root.mkdir(parents=True, exist_ok=True)
        return DirLease(self.root, model)

    # ---- reading
    def versions(self, model: str) -> list[int]:
        d = self._path(model)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())

    def read_file(self, model: str, *parts: str | int) -> bytes | None:
        path = self._path(model, *parts)
        return path.read_bytes() if path.is_file() else None

    def exists(self, model: str, *parts: str | int) -> bool:
        return self._path(model, *parts).exists()

    # ---- writing: every write step of a directory repository
    def write_file(self, step: str, data: bytes, model: str, *parts: str) -> None:
        path = self._path(model, *parts)
        mode = path.stat().st_mode & 0o7777 if path.is_file() else None
        self._write_step(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, data)
        if mode is not None:
            path.chmod(mode)  # an operator's permissions on config.pbtxt survive a switch

    def delete_file(self, step: str, model: str, *parts: str) -> None:
        self._write_step(step)
        self._path(model, *parts).unlink(missing_ok=True)

    def write_version(self, step: str, model: str, version: int, bundle_dir: Path, files: dict[str, str]) -> None:
        final = self._path(model, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic.staged_dir(final) as tmp:
            link_tree(bundle_dir, tmp / BUNDLE_DIR)  # bundles are immutable: hard links are safe
            _write_files(tmp, files)
            self._write_step(step)  # everything is in the temporary directory; the rename publishes it

    def write_model(self, step: str, name: str, version: int, config_text: str, files: dict[str, str]) -> None:
        with atomic.staged_dir(self._path(name)) as tmp:
            _write_files(tmp / str(version), files)
            (tmp / CONFIG).write_text(config_text)
            self._write_step(step)

    def remove_tree(self, step: str, model: str, *parts: str | int) -> None:
        path = self._path(model, *parts)
        if path.exists():
            self._write_step(step)
            shutil.rmtree(path, ignore_errors=True)

    # ---- directory only
    def top_level_models(self) -> list[str]:
        """Models to load when a server starts: every model with a config.pbtxt except the composing
        models of some version (those load with their ensemble, and only the served version's)."""
        if not self.root.is_dir():
            return []
        # a hidden entry is a temporary directory left by a killed write (atomic.staged_dir), never a model
        models = [p.name for p in sorted(self.root.iterdir())
                  if not p.name.startswith(".") and (p / CONFIG).is_file()]
        composing = {name for m in models for v in self.versions(m) for name in self.version_composing(m, v)}
        return [m for m in models if m not in composing]


def top_level_models(repository: Path) -> list[str]:
    return DirectoryRepository(repository).top_level_models()


def _write_files(vdir: Path, files: dict[str, str]) -> None:
    vdir.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = vdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
