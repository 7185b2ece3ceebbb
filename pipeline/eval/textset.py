"""Token windows for teacher-forced evaluation, from the same kinds of sources as calibration."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pipeline.errors import StageError


def pydoc_text() -> str:
    """Offline English text shipped with every CPython; topics sorted so the text never varies."""
    import pydoc_data.topics

    return "\n\n".join(v for _, v in sorted(pydoc_data.topics.topics.items()))


def load_text(source: str, base: Path | None = None) -> str:
    if source == "builtin:pydoc":
        return pydoc_text()
    if source.startswith("hf:"):
        raise StageError("accuracy", f"text set '{source}' needs network; use builtin:pydoc or a local file")
    path = Path(source) if base is None or Path(source).is_absolute() else base / source
    if not path.is_file():
        raise StageError("accuracy", f"text set {path} not found")
    if path.suffix == ".jsonl":
        return "\n\n".join(json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip())
    return path.read_text()


def windows(tokenizer: Any, text: str, *, count: int, length: int, seed: int = 20261123) -> list[list[int]]:
    """`count` non-overlapping windows of `length` tokens, picked with a fixed seed."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    slots = len(ids) // length
    if slots < count:
        raise StageError("accuracy", f"text set has {len(ids)} tokens: not enough for {count} windows of {length}")
    picks = sorted(random.Random(seed).sample(range(slots), count))  # noqa: S311 - sampling, not crypto
    return [ids[i * length:(i + 1) * length] for i in picks]
