"""Task accuracy through a generate function (the served model, or a runtime in-process).

`multiple-choice`: few-shot prompt with lettered choices, greedy, the first letter answered is
scored. `exact-match`: few-shot prompt, greedy, the first line of the answer must equal the
reference. Both sides of a comparison see the same prompts, so outcomes pair item by item.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import StageError

DATA = Path(__file__).parent / "data"
LETTERS = "ABCD"
Generate = Callable[[str, int], str]  # prompt, max_tokens -> greedy text
GenerateMany = Callable[[list[str], int], list[str]]  # the same for many prompts, in order


@dataclass
class TaskResult:
    name: str
    kind: str
    n: int
    correct: list[bool]
    answers: list[str]

    @property
    def accuracy(self) -> float:
        return 100.0 * sum(self.correct) / self.n if self.n else float("nan")


def load_items(data: str, base: Path | None = None) -> list[dict[str, Any]]:
    if data.startswith("builtin:"):
        path = DATA / f"{data.removeprefix('builtin:')}.jsonl"
        if not path.is_file():
            known = ", ".join(f"builtin:{p.stem}" for p in sorted(DATA.glob("*.jsonl")))
            raise StageError("accuracy", f"unknown task data '{data}'; shipped sets: {known}")
    else:
        path = Path(data) if base is None or Path(data).is_absolute() else base / data
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise StageError("accuracy", f"task data {path} not found") from None
    except json.JSONDecodeError as e:
        raise StageError("accuracy", f"{path}: line {e.lineno}: not JSON ({e.msg})") from None


def _mc_prompt(item: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    def block(it: dict[str, Any], with_answer: bool) -> str:
        lines = [f"Question: {it['question']}"]
        lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(it["choices"])]
        lines.append(f"Answer: {it['answer']}" if with_answer else "Answer:")
        return "\n".join(lines)

    return "\n\n".join([*(block(s, True) for s in shots), block(item, False)])


def _em_prompt(item: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    return "\n".join([*(f"{s['prompt']} {s['answer']}" for s in shots), item["prompt"]])


def one_by_one(generate: Generate) -> GenerateMany:
    def many(prompts: list[str], n: int) -> list[str]:
        return [generate(p, n) for p in prompts]

    return many


def run_task(name: str, kind: str, items: list[dict[str, Any]], generate: GenerateMany, *, shots: int = 2,
             limit: int | None = None) -> TaskResult:
    """Score items after the first `shots` (which serve as the few-shot examples).

    Every prompt goes to `generate` in one call, so a batching runtime can share forwards.
    """
    examples, evaluated = items[:shots], items[shots:]
    if limit is not None:
        evaluated = evaluated[:limit]
    if kind == "multiple-choice":
        outs = generate([_mc_prompt(it, examples) for it in evaluated], 3)
    elif kind == "exact-match":
        outs = generate([_em_prompt(it, examples) for it in evaluated], 8)
    else:
        raise StageError("accuracy", f"task kind '{kind}' needs lm-eval-harness on a GPU host with network")
    if len(outs) != len(evaluated):
        raise StageError("accuracy", f"task {name}: {len(outs)} answers for {len(evaluated)} prompts")
    correct: list[bool] = []
    answers: list[str] = []
    for it, out in zip(evaluated, outs, strict=True):
        if kind == "multiple-choice":
            got = next((ch for ch in out.strip()[:3] if ch in LETTERS), "")
        else:
            got = out.strip().split("\n")[0].strip()
        correct.append(got == it["answer"])
        answers.append(got)
    return TaskResult(name, kind, len(evaluated), correct, answers)
