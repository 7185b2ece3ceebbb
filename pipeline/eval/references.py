"""Reference task scores for TensorRT-LLM's unpaired rule, kept in YAML.

    <model>/<quant_algo>/<kv_cache_quant_algo>:      # e.g. smollm2-135m-cpu/fp8/fp8
      <task>: {accuracy: 26.316, n: 38, sigma: 50.0, measured: baseline, date: 2026-11-23, commit: 75cf23b...}

`trtbuild run RECIPE --record-references` writes the *baseline* scores (the unquantized source
checkpoint, measured by the accuracy stage on the same items) under the recipe's key: later
candidates for that model and quantization must not fall significantly below them
(reference - z(1-alpha) * sqrt(2 sigma^2 / n)). The recording run itself is judged against the
file as it was before it wrote (the gate never checks values against themselves); the new
values apply from the next run, which re-runs the accuracy stage because the stage fingerprint
holds the key's entry. Writes are atomic (temporary file + rename) under an flock, and every
value that replaces a different one is reported old -> new.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import StageError
from pipeline.util import atomic


def reference_key(model: str, algo: str, kv: str) -> str:
    return f"{model}/{algo}/{kv}"


def load(path: Path) -> dict[str, Any]:
    """The whole file ({} when absent); a malformed file is one clear error naming it."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StageError("accuracy", f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix or remove the "
                         "file (gates.accuracy.references)") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise StageError("accuracy", f"{path}: expected a mapping of 'model/quant/kv' keys to task entries; "
                         "fix or remove the file (gates.accuracy.references)")
    for key, tasks in data.items():
        for task, entry in tasks.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("accuracy"), int | float):
                raise StageError("accuracy", f"{path}: {key}.{task}: needs a numeric 'accuracy' (0-100); fix it or "
                                 "record it again with `trtbuild run RECIPE --record-references`")
    return data


def entry_digest(path: Path, key: str) -> str:
    """Digest of one key's entry, for the accuracy stage fingerprint ('absent' when none)."""
    entry = load(path).get(key)
    if entry is None:
        return "absent"
    return hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()


def _describe(entry: dict[str, Any]) -> str:
    extra = ", ".join(f"{k} {entry[k]}" for k in ("n", "date") if k in entry)
    return f"{entry['accuracy']}" + (f" ({extra})" if extra else "")


def record(path: Path, key: str, scores: dict[str, dict[str, Any]], *, date: str,
           commit: str | None) -> list[str]:
    """Write `scores` (task -> {accuracy, n, sigma}) under `key`; return one line per task saying
    what happened (new, unchanged, or old -> new). Other keys and tasks are kept."""
    if not path.parent.is_dir():
        raise StageError("accuracy", f"references file {path}: directory {path.parent} does not exist; set "
                         "gates.accuracy.references to a path under an existing directory")
    lines: list[str] = []
    with _locked(path):
        data = load(path)
        entries = data.setdefault(key, {})
        for task, score in scores.items():
            new = {"accuracy": round(float(score["accuracy"]), 3), "n": int(score["n"]),
                   "sigma": float(score["sigma"]), "measured": "baseline", "date": date, "commit": commit or "unknown"}
            old = entries.get(task)
            same = old is not None and all(old.get(k) == new[k] for k in ("accuracy", "n", "sigma"))
            if old is None:
                lines.append(f"{key} {task}: new reference {_describe(new)}")
            elif same:
                lines.append(f"{key} {task}: unchanged {_describe(old)}")
                continue  # keep the date and commit of the first measurement
            else:
                lines.append(f"{key} {task}: REPLACED {_describe(old)} -> {_describe(new)}")
            entries[task] = new
        atomic.write_text(path, yaml.safe_dump(data, sort_keys=True))
    return lines


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Recipes run in parallel share one file: serialize read-modify-write so none is lost."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock
