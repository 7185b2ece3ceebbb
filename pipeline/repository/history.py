"""Which bundle each version of a model was, and where it is stored: what rollback needs once
the version directory itself was pruned.

`<repository>/<model>/history.json`, on any backend (Triton ignores non-numeric entries of a model
directory):

    {"schema_version": 1, "versions": {"3": {"bundle_id": "<sha256>", "store": "s3://b/p"}}}

Written atomically (temporary file + rename, or one PUT) after a version is published; `store` is the bundle
store's URI (the one `release` put the bundle into), or null when publish was not told one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import TrtbuildError

if TYPE_CHECKING:
    from pipeline.repository.base import ModelRepository

HISTORY = "history.json"
SCHEMA = 1


class HistoryError(TrtbuildError):
    """history.json is unreadable or does not know a version."""


@dataclass(frozen=True)
class Entry:
    version: int
    bundle_id: str
    store: str | None


def read(repo: ModelRepository, model: str) -> dict[int, Entry]:
    raw = repo.read_file(model, HISTORY)
    if raw is None:
        return {}
    path = repo.where(model, HISTORY)
    try:
        data = json.loads(raw.decode("utf-8"))
        versions = data["versions"]
        if data.get("schema_version") != SCHEMA or not isinstance(versions, dict):
            raise ValueError(f"schema_version {data.get('schema_version')!r}, expected {SCHEMA}")
        return {int(v): Entry(int(v), str(e["bundle_id"]), e.get("store")) for v, e in versions.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # UnicodeDecodeError is a ValueError
        raise HistoryError(f"{path}: unreadable version history ({e}); fix or remove it "
                           "(only rollback to pruned versions needs it)") from None


def record(repo: ModelRepository, model: str, version: int, bundle_id: str, store: str | None) -> None:
    """Add or replace `version`; an existing store URI is kept when this publish names none."""
    entries = read(repo, model)
    old = entries.get(version)
    keep_store = old.store if old is not None and old.bundle_id == bundle_id else None
    entries[version] = Entry(version, bundle_id, store or keep_store)
    doc: dict[str, Any] = {"schema_version": SCHEMA, "versions": {
        str(v): {"bundle_id": e.bundle_id, "store": e.store} for v, e in sorted(entries.items())}}
    repo.write_file("publish.history", (json.dumps(doc, indent=2) + "\n").encode(), model, HISTORY)


def lookup(repo: ModelRepository, model: str, version: int) -> Entry:
    entry = read(repo, model).get(version)
    if entry is None:
        raise HistoryError(f"model '{model}' version {version} is neither on disk nor in "
                           f"{repo.where(model, HISTORY)}; nothing to roll back to",
                           hint="`trtbuild list MODEL` shows released versions; publish that bundle again")
    if not entry.store:
        raise HistoryError(f"model '{model}' version {version} was pruned and {repo.where(model, HISTORY)} "
                           "records no store for its bundle",
                           hint="publish with --store (the release store URI) so pruned versions can come back")
    return entry
