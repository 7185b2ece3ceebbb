"""The baseline side of the accuracy gate, kept between runs.

The baseline is the unquantized source: for one source checkpoint, text windows and task items
it never changes, however often the candidate does (another quantization, a rebuilt bundle,
`--record-references`). Kept here, by a key of exactly those inputs plus the code and library
versions that compute them:

- task results (answers and correctness per item), a few kB;
- for the teacher-forced windows, the hidden states the model feeds its lm_head, not the
  log-probabilities: [windows, length, hidden] is 19 MB for SmolLM2 at 32 x 256 where the
  log-probabilities would be 1.6 GB. A cached window is scored as lm_head(h) -> log_softmax, the
  very operations of the forward on the very input, so the numbers are bit-identical (tested);
  that skips about 80% of the baseline's teacher-forced compute.

Writes are atomic; a missing or unreadable entry is simply recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.eval.tasks import TaskResult
from pipeline.util import atomic

# bump when what is cached, or how the baseline is computed, changes
VERSION = 1


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class BaselineCache:
    def __init__(self, root: Path, source_digest: str) -> None:
        import transformers

        self.root = root
        self.base = {"version": VERSION, "source": source_digest, "torch": torch.__version__,
                     "transformers": transformers.__version__}

    # ---------------------------------------------------------------- tasks
    def _task_path(self, spec: Any) -> Path:
        key = digest({**self.base, "task": [spec.name, spec.kind, spec.items, spec.limit]})
        return self.root / f"task-{key}.json"

    def task(self, spec: Any) -> TaskResult | None:
        try:
            return TaskResult(**json.loads(self._task_path(spec).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def put_task(self, spec: Any, result: TaskResult) -> None:
        atomic.write_text(self._task_path(spec), json.dumps(asdict(result)))

    # ---------------------------------------------------------------- teacher-forced
    def scorer(self, runtime: Any, seqs: Sequence[Sequence[int]]) -> CachedScorer:
        path = self.root / f"tf-{digest({**self.base, 'windows': [list(s) for s in seqs]})}.safetensors"
        return CachedScorer(runtime, seqs, path)


class CachedScorer:
    """A batch scorer for the baseline over `seqs` in order: from the cached lm_head inputs when
    present, else by running the model and keeping them (saved by `save()`)."""

    def __init__(self, runtime: Any, seqs: Sequence[Sequence[int]], path: Path) -> None:
        self.rt, self.path = runtime, path
        self.ids = [list(s) for s in seqs]
        self.pos = 0  # compare_batched asks for the sequences in order
        self.cached = self._load()
        self.kept: list[torch.Tensor] = []

    @property
    def hit(self) -> bool:
        return self.cached is not None

    def _load(self) -> list[torch.Tensor] | None:
        if not self.path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            t = load_file(self.path)
        except Exception:
            return None
        if len(t) != len(self.ids) or any(f"h{i}" not in t for i in range(len(self.ids))):
            return None
        return [t[f"h{i}"] for i in range(len(self.ids))]

    @torch.inference_mode()
    def __call__(self, chunk: Sequence[Sequence[int]]) -> torch.Tensor:
        rows = range(self.pos, self.pos + len(chunk))
        if [self.ids[i] for i in rows] != [list(s) for s in chunk]:
            raise ValueError("baseline cache: sequences asked out of order")
        self.pos += len(chunk)
        if self.cached is not None:
            h = torch.stack([self.cached[i] for i in rows])
            logits = self.rt.model.lm_head(h)[:, :-1].to(torch.float32)  # as the model's forward does
            return torch.log_softmax(logits, dim=-1)
        seen: list[torch.Tensor] = []
        hook = self.rt.model.lm_head.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
        try:
            out = self.rt.score_batch(chunk)
        finally:
            hook.remove()
        self.kept.extend(seen[0].unbind(0))
        return out

    def save(self) -> None:
        if self.cached is not None or len(self.kept) != len(self.ids):
            return
        from safetensors.torch import save

        data = save({f"h{i}": h.contiguous() for i, h in enumerate(self.kept)})
        atomic.write_bytes(self.path, data)
