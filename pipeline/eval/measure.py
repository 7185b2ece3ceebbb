"""Both sides of the accuracy gate measured on the same windows and prompts.

`batched=True` is what the stage runs: teacher-forced windows `tf_batch` at a time and each
task's prompts in unpadded batches of one length. `batched=False` is one sequence and one
prompt per forward, kept as the yardstick: both give the same numbers (tests and
benchmarks/accuracy_speed.py compare them), the batched one in a fraction of the time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.eval import tasks, teacher_forced
from pipeline.eval.baseline_cache import BaselineCache
from pipeline.eval.tasks import TaskResult
from pipeline.eval.teacher_forced import TeacherForced

# description, total -> a context manager whose value has .advance() (a runner progress bar)
Progress = Callable[[str, int], Any]


@dataclass
class TaskSpec:
    name: str
    kind: str
    items: list[dict[str, Any]]
    limit: int | None = None


@dataclass
class Measured:
    teacher_forced: TeacherForced
    tasks: list[tuple[TaskResult, TaskResult]]  # (baseline, candidate) per task
    seconds: dict[str, float] = field(default_factory=dict)  # per part, for profiles and benchmarks
    cached: list[str] = field(default_factory=list)  # baseline parts taken from the BaselineCache


class _NoBar:
    def advance(self, *_: Any) -> None:
        pass


def _no_progress(_desc: str, _total: int) -> Any:
    return contextlib.nullcontext(_NoBar())


def measure(baseline: Any, candidate: Any, seqs: Sequence[Sequence[int]], specs: Sequence[TaskSpec], *,
            batched: bool = True, tf_batch: int = 4, progress: Progress | None = None,
            cache: BaselineCache | None = None) -> Measured:
    """`baseline` and `candidate` are ReferenceRuntimes (score/score_batch, generate/generate_batch).

    With `cache` (batched only), the baseline's task results and teacher-forced lm_head inputs
    come from earlier runs on the same source, windows and items, and are kept for later ones.
    """
    from pipeline.backends.reference.runtime import SamplingParams

    progress = progress or _no_progress
    seconds: dict[str, float] = {}
    hits: list[str] = []
    start = time.perf_counter()
    with progress("teacher-forced comparison", len(seqs)) as bar:
        if batched:
            scorer = cache.scorer(baseline, seqs) if cache is not None else None
            tf = teacher_forced.compare_batched(scorer or baseline.score_batch, candidate.score_batch, seqs,
                                                batch_size=tf_batch, progress=bar.advance)
            if scorer is not None and scorer.hit:
                hits.append("teacher-forced")
            elif scorer is not None:
                scorer.save()
        else:
            tf = teacher_forced.compare(baseline.score, candidate.score, seqs, progress=bar.advance)
    seconds["teacher-forced"] = time.perf_counter() - start
    pairs = []
    for spec in specs:
        with progress(f"task {spec.name}", 2) as bar:
            side = []
            for label, rt in (("baseline", baseline), ("candidate", candidate)):
                start = time.perf_counter()
                kept = cache.task(spec) if cache is not None and batched and label == "baseline" else None
                if kept is not None:
                    hits.append(f"{spec.name} baseline")
                    side.append(kept)
                else:
                    gen = (_greedy_many(rt, SamplingParams) if batched
                           else tasks.one_by_one(_greedy_one(rt, SamplingParams)))
                    side.append(tasks.run_task(spec.name, spec.kind, spec.items, gen, limit=spec.limit))
                    if cache is not None and batched and label == "baseline":
                        cache.put_task(spec, side[-1])
                seconds[f"{spec.name} {label}"] = time.perf_counter() - start
                bar.advance()
        pairs.append((side[0], side[1]))
    return Measured(tf, pairs, seconds, hits)


def _greedy_one(rt: Any, params_cls: Any) -> tasks.Generate:
    def gen(prompt: str, n: int) -> str:
        return str(rt.generate(prompt, params_cls(max_tokens=n)).text)

    return gen


def _greedy_many(rt: Any, params_cls: Any) -> tasks.GenerateMany:
    """All prompts of a task at once: unpadded batches of one prompt length, so the answers are
    those of one request at a time (see ReferenceRuntime.generate_batch)."""
    def gen(prompts: list[str], n: int) -> list[str]:
        return [str(g.text) for g in rt.generate_batch(prompts, params_cls(max_tokens=n))]

    return gen
