"""Deterministic calibration batches and the digest of exactly the token ids used."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import QuantizeError


@dataclass
class Calibration:
    dataset: str
    samples: int
    seq_len: int
    seed: int
    batches: list[Any] = field(repr=False)  # torch tensors [1, seq_len]
    digest: str = ""

    def record(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "samples": self.samples, "seq_len": self.seq_len, "seed": self.seed,
                "digest": self.digest}


def _text(dataset: str) -> str:
    if dataset == "builtin:pydoc":
        from pipeline.eval.textset import pydoc_text

        return pydoc_text()
    if dataset.startswith("hf:"):
        spec = dataset.removeprefix("hf:").split(":")
        try:
            import datasets
        except ImportError:
            raise QuantizeError(f"calibration dataset '{dataset}' needs the `datasets` package and network; "
                                "use builtin:pydoc or a local .txt/.jsonl file offline") from None
        ds = datasets.load_dataset(spec[0], split=spec[1] if len(spec) > 1 else "train")
        column = "text" if "text" in ds.column_names else ds.column_names[0]
        return "\n\n".join(str(x) for x in ds[column][:20000])
    path = Path(dataset)
    if not path.is_file():
        raise QuantizeError(f"calibration dataset '{dataset}' not found: use builtin:pydoc, hf:<id>[:split], "
                            "or a .txt/.jsonl path")
    if path.suffix == ".jsonl":
        try:
            return "\n\n".join(json.loads(x)["text"] for x in path.read_text().splitlines() if x.strip())
        except (KeyError, json.JSONDecodeError) as e:
            raise QuantizeError(f"{path}: every line must be JSON with a 'text' field ({e})") from None
    return path.read_text()


def load_calibration(dataset: str, tokenizer: Any, *, samples: int, seq_len: int, seed: int) -> Calibration:
    import torch

    ids = list(tokenizer(_text(dataset), add_special_tokens=False)["input_ids"])
    slots = len(ids) // seq_len
    if slots < samples:
        raise QuantizeError(f"calibration set '{dataset}' has {len(ids)} tokens: fewer than samples x seq_len "
                            f"({samples} x {seq_len}); lower calibration.samples or seq_len")
    picks = sorted(random.Random(seed).sample(range(slots), samples))  # noqa: S311 - sampling, not crypto
    h = hashlib.sha256()
    batches = []
    for i in picks:
        window = ids[i * seq_len:(i + 1) * seq_len]
        h.update(json.dumps(window).encode())
        batches.append(torch.tensor([window]))
    return Calibration(dataset, samples, seq_len, seed, batches, h.hexdigest())
