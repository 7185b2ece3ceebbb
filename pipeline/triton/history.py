"""Which bundle each version of a model was, and where it is stored: what rollback needs once
the version directory itself was pruned.

`<repository>/<model>/history.json` (Triton ignores non-numeric entries of a model directory):

    {"schema_version": 1, "versions": {"3": {"bundle_id": "<sha256>", "store": "s3://b/p"}}}

Written atomically (temporary file + rename) after a version is published; `store` is the bundle
store's URI (the one `release` put the bundle into), or null when publish was not told one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import TrtbuildError
from pipeline.util import atomic

HISTORY = "history.json"
SCHEMA = 1


class HistoryError(TrtbuildError):
    """history.json is unreadable or does not know a version."""


@dataclass(frozen=True)
class Entry:
    version: int
    bundle_id: str
    store: str | None


def _path(model_dir: Path) -> Path:
    return model_dir / HISTORY


def read(model_dir: Path) -> dict[int, Entry]:
    path = _path(model_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        versions = data["versions"]
        if data.get("schema_version") != SCHEMA or not isinstance(versions, dict):
            raise ValueError(f"schema_version {data.get('schema_version')!r}, expected {SCHEMA}")
        return {int(v): Entry(int(v), str(e["bundle_id"]), e.get("store")) for v, e in versions.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise HistoryError(f"{path}: unreadable version history ({e}); fix or remove it "
                           "(only rollback to pruned versions needs it)") from None


def record(model_dir: Path, version: int, bundle_id: str, store: str | None) -> None:
    """Add or replace `version`; an existing store URI is kept when this publish names none."""
    entries = read(model_dir)
    old = entries.get(version)
    keep_store = old.store if old is not None and old.bundle_id == bundle_id else None
    entries[version] = Entry(version, bundle_id, store or keep_store)
    doc: dict[str, Any] = {"schema_version": SCHEMA, "versions": {
        str(v): {"bundle_id": e.bundle_id, "store": e.store} for v, e in sorted(entries.items())}}
    atomic.write_text(_path(model_dir), json.dumps(doc, indent=2) + "\n")


def lookup(model_dir: Path, version: int) -> Entry:
    entry = read(model_dir).get(version)
    if entry is None:
        raise HistoryError(f"model '{model_dir.name}' version {version} is neither on disk nor in "
                           f"{_path(model_dir)}; nothing to roll back to",
                           hint="`trtbuild list MODEL` shows released versions; publish that bundle again")
    if not entry.store:
        raise HistoryError(f"model '{model_dir.name}' version {version} was pruned and {_path(model_dir)} "
                           "records no store for its bundle",
                           hint="publish with --store (the release store URI) so pruned versions can come back")
    return entry
