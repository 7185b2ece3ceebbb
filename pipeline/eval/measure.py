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


class _NoBar:
    def advance(self, *_: Any) -> None:
        pass


def _no_progress(_desc: str, _total: int) -> Any:
    return contextlib.nullcontext(_NoBar())


def measure(baseline: Any, candidate: Any, seqs: Sequence[Sequence[int]], specs: Sequence[TaskSpec], *,
            batched: bool = True, tf_batch: int = 4, progress: Progress | None = None) -> Measured:
    """`baseline` and `candidate` are ReferenceRuntimes (score/score_batch, generate/generate_batch)."""
    from pipeline.backends.reference.runtime import SamplingParams

    progress = progress or _no_progress
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with progress("teacher-forced comparison", len(seqs)) as bar:
        if batched:
            tf = teacher_forced.compare_batched(baseline.score_batch, candidate.score_batch, seqs,
                                                batch_size=tf_batch, progress=bar.advance)
        else:
            tf = teacher_forced.compare(baseline.score, candidate.score, seqs, progress=bar.advance)
    seconds["teacher-forced"] = time.perf_counter() - start
    pairs = []
    for spec in specs:
        with progress(f"task {spec.name}", 2) as bar:
            side = []
            for label, rt in (("baseline", baseline), ("candidate", candidate)):
                start = time.perf_counter()
                gen = _greedy_many(rt, SamplingParams) if batched else tasks.one_by_one(_greedy_one(rt, SamplingParams))
                side.append(tasks.run_task(spec.name, spec.kind, spec.items, gen, limit=spec.limit))
                seconds[f"{spec.name} {label}"] = time.perf_counter() - start
                bar.advance()
        pairs.append((side[0], side[1]))
    return Measured(tf, pairs, seconds)


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
