"""lm-evaluation-harness tasks through its OpenAI-compatible `local-completions` model.

The harness runs as a subprocess from its own interpreter (the one in the recipe, or trtbuild's),
once per side against an OpenAI `/v1/completions` endpoint: the candidate (trtllm-serve on a GPU
host, trtbuild's reference OpenAI server here) and the baseline (vLLM, or the reference server
on the unquantized source). `--log_samples` writes one JSON line per document and filter; the
gate pairs the two sides by document and checks that both saw the same prompt (`prompt_hash`)
before McNemar compares right/wrong outcomes.

Command line: lm-eval's legacy form (`python -m lm_eval --model ... --tasks a,b`), which
0.4.x releases before the `run` subcommand and after it (0.4.13 inserts `run` itself) accept.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pipeline.errors import StageError
from pipeline.eval.tasks import TaskResult
from pipeline.util.proc import stop_process_group

SHIPPED_TASKS = Path(__file__).parent / "lm_eval_tasks"


@dataclass(frozen=True)
class LmEvalTask:
    name: str  # the name in reports
    task: str  # lm-eval's task name
    metric: str = "acc"
    filter: str | None = None  # None: the task's only filter
    num_fewshot: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI completions server and how lm-eval should talk to it."""

    base_url: str  # http://host:port
    model: str  # the served model name
    tokenizer: Path  # a local Hugging Face tokenizer: prompts are sent as token ids

    @property
    def completions_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/completions"


@dataclass(frozen=True)
class Settings:
    python: str
    include_path: Path = SHIPPED_TASKS
    num_concurrent: int = 4
    batch_size: int = 1
    max_length: int = 2048
    max_retries: int = 3
    request_timeout_s: int = 300
    run_timeout_s: float = 3600.0
    seed: int = 1234
    model_args: tuple[tuple[str, str], ...] = ()  # the recipe's extra local-completions model_args
    extra_args: tuple[str, ...] = ()


@dataclass
class Sample:
    doc_id: int
    value: float
    prompt_hash: str
    answer: str


@dataclass
class SideRun:
    seconds: float
    samples: dict[str, dict[str, Sample]] = field(default_factory=dict)  # report name -> subtask/doc -> sample
    output_types: dict[str, str] = field(default_factory=dict)  # subtask -> lm-eval output_type


def groups(tasks: Sequence[LmEvalTask]) -> list[list[LmEvalTask]]:
    """Tasks that share --num_fewshot and --limit run in one lm-eval invocation (both are global flags)."""
    out: dict[tuple[int | None, int | None], list[LmEvalTask]] = {}
    for t in tasks:
        out.setdefault((t.num_fewshot, t.limit), []).append(t)
    return list(out.values())


def argv(settings: Settings, tasks: Sequence[LmEvalTask], endpoint: Endpoint, out_dir: Path) -> list[str]:
    """The lm-eval command line for `tasks` against `endpoint` (local-completions, token-id prompts)."""
    model_args = ",".join([
        f"model={endpoint.model}",
        f"base_url={endpoint.completions_url}",
        "tokenizer_backend=huggingface",
        f"tokenizer={endpoint.tokenizer}",
        "tokenized_requests=True",
        f"num_concurrent={settings.num_concurrent}",
        f"max_retries={settings.max_retries}",
        f"timeout={settings.request_timeout_s}",
        f"max_length={settings.max_length}",
        *(f"{k}={v}" for k, v in settings.model_args),
    ])
    fewshot, limit = tasks[0].num_fewshot, tasks[0].limit
    cmd = [settings.python, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
           "--tasks", ",".join(t.task for t in tasks), "--batch_size", str(settings.batch_size),
           "--include_path", str(settings.include_path), "--output_path", str(out_dir), "--log_samples",
           "--seed", str(settings.seed)]
    if fewshot is not None:
        cmd += ["--num_fewshot", str(fewshot)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return [*cmd, *settings.extra_args]


def run_side(settings: Settings, tasks: Sequence[LmEvalTask], endpoint: Endpoint, out_dir: Path, *,
             label: str, on_line: Callable[[str], None] | None = None) -> SideRun:
    """Run every task against one endpoint; samples keyed by report name and `subtask/doc_id`.

    Loglikelihood tasks (multiple_choice and the like) need prompt logprobs; an endpoint without them
    either errors or, with text prompts, scores every choice 0 and reports chance accuracy without a
    word. So the endpoint is probed first and such a task on such an endpoint is refused.
    """
    if not Path(settings.python).exists():
        raise StageError("accuracy", f"lm-eval interpreter {settings.python} not found",
                         hint="set gates.accuracy.lm_eval.python to a Python with `lm-eval[api]` installed")
    missing = probe_prompt_logprobs(endpoint)
    start = time.perf_counter()
    side = SideRun(0.0)
    for i, group in enumerate(groups(tasks)):
        run_dir = out_dir / f"{label}-{i}"
        log = out_dir / f"{label}-{i}.log"
        try:
            _invoke(argv(settings, group, endpoint, run_dir), log, cwd=settings.include_path,
                    timeout=settings.run_timeout_s, label=label, on_line=on_line)
        except StageError as e:
            if missing is None:
                raise
            raise StageError("accuracy", f"{e}; the {label} endpoint gives no prompt logprobs ({missing})",
                             hint=NO_PROMPT_LOGPROBS) from None
        for t in group:
            side.samples[t.name] = read_samples(run_dir, t)
            side.output_types |= leaf_tasks(run_dir, t.task)
    needs = sorted(t for t, kind in side.output_types.items() if kind in LOGLIKELIHOOD)
    if missing is not None and needs:
        raise StageError("accuracy", f"lm-eval task {needs[0]} scores loglikelihoods, but the {label} endpoint "
                         f"{endpoint.base_url} gives no prompt logprobs ({missing})", hint=NO_PROMPT_LOGPROBS)
    side.seconds = time.perf_counter() - start
    return side


def _invoke(cmd: list[str], log: Path, *, cwd: Path, timeout: float, label: str,
            on_line: Callable[[str], None] | None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    # relative data_files in task YAMLs resolve against the include path, which is the cwd
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)
        # a reader thread keeps the log and progress going, so a silent hang still meets the timeout
        reader = threading.Thread(target=_pump, args=(proc, out, on_line), daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process_group(proc)
            raise StageError("accuracy", f"lm-eval ({label}) ran over {timeout:.0f}s; log: {log}") from None
        except BaseException:  # Ctrl-C: its own session does not get it, so stop it here
            stop_process_group(proc)
            raise
        finally:
            reader.join(timeout=10)
    if rc != 0:
        raise StageError("accuracy", f"lm-eval ({label}) exited {rc}: {_last_error(log)} (log: {log})")


def _pump(proc: subprocess.Popen[str], out: TextIO, on_line: Callable[[str], None] | None) -> None:
    for line in proc.stdout or ():
        out.write(line)
        out.flush()
        if on_line is not None and line.strip():
            on_line(line.rstrip())


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


NO_PROMPT_LOGPROBS = ("use generate_until tasks (e.g. gsm8k, mmlu_generative, trtbuild_copy) against this endpoint; "
                      "trtllm-serve returns logprobs of generated tokens only")
LOGLIKELIHOOD = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")


def leaf_tasks(run_dir: Path, task: str) -> dict[str, str]:
    """The single tasks behind `task` (itself, or a group's members) with their lm-eval output_type."""
    results = sorted(run_dir.rglob("results_*.json"))
    if not results:
        raise StageError("accuracy", f"lm-eval wrote no results file under {run_dir}")
    data = json.loads(results[-1].read_text())
    groups: dict[str, list[str]] = data.get("group_subtasks", {})
    configs: dict[str, dict[str, object]] = data.get("configs", {})

    def leaves(name: str) -> list[str]:
        members = groups.get(name) or []
        return [leaf for m in members for leaf in leaves(m)] if members else [name]

    return {leaf: str(configs.get(leaf, {}).get("output_type", "")) for leaf in leaves(task)}


def read_samples(run_dir: Path, task: LmEvalTask) -> dict[str, Sample]:
    """Per-document outcomes of one task (or every member of a group), keyed `subtask/doc_id`, from
    lm-eval's `samples_<task>_<date>.jsonl` files."""
    out: dict[str, Sample] = {}
    for leaf in leaf_tasks(run_dir, task.task):
        files = sorted(run_dir.rglob(f"samples_{leaf}_*.jsonl"))
        if not files:
            raise StageError("accuracy", f"lm-eval wrote no samples for task '{leaf}' under {run_dir}")
        rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
        for doc_id, sample in _outcomes(task, leaf, rows).items():
            out[f"{leaf}/{doc_id}"] = sample
    return out


def _outcomes(task: LmEvalTask, leaf: str, rows: list[dict[str, Any]]) -> dict[int, Sample]:
    filters = sorted({str(r.get("filter")) for r in rows})
    chosen = task.filter if task.filter is not None else (filters[0] if len(filters) == 1 else None)
    if chosen is None or chosen not in filters:
        raise StageError("accuracy", f"task {task.name}: lm-eval filter '{task.filter}' not among {filters} "
                         f"({leaf})", hint="set the task's `filter` to one of them")
    out: dict[int, Sample] = {}
    for r in rows:
        if str(r.get("filter")) != chosen:
            continue
        if task.metric not in r:
            raise StageError("accuracy", f"task {task.name}: lm-eval metric '{task.metric}' not in the samples of "
                             f"{leaf} (has {r.get('metrics', [])})", hint="set the task's `metric` to one of them")
        value = float(r[task.metric])
        if value not in (0.0, 1.0):
            raise StageError("accuracy", f"task {task.name}: metric '{task.metric}' is {value} for {leaf} doc "
                             f"{r['doc_id']}, not right/wrong (0 or 1)",
                             hint="the gate pairs right/wrong outcomes (McNemar); pick a 0/1 metric such as "
                                  "acc or exact_match")
        out[int(r["doc_id"])] = Sample(int(r["doc_id"]), value, str(r.get("prompt_hash", "")),
                                       json.dumps(r.get("filtered_resps"))[:200])
    return out


def probe_prompt_logprobs(endpoint: Endpoint, timeout: float = 60.0) -> str | None:
    """None when the endpoint returns logprobs for prompt tokens with echo (what lm-eval's loglikelihood
    requests read), else why not. trtllm-serve returns logprobs of generated tokens only."""
    import requests

    body: dict[str, Any] = {"model": endpoint.model, "prompt": "The capital of France is", "max_tokens": 1,
                            "temperature": 0, "echo": True, "logprobs": 1}
    try:
        r = requests.post(endpoint.completions_url, json=body, timeout=timeout)
        lp = (r.json()["choices"][0].get("logprobs") or {}) if r.status_code == 200 else {}
    except (requests.RequestException, ValueError, KeyError, IndexError) as e:
        return f"probe request failed ({type(e).__name__})"
    if r.status_code != 200:
        return f"echo + logprobs answered HTTP {r.status_code}"
    values = lp.get("token_logprobs") or []
    if len(values) < 3 or not any(v is not None for v in values[1:-1]):
        return f"echo + logprobs returned {len(values)} token logprobs, none for the prompt"
    return None


def pair(task: LmEvalTask, baseline: dict[str, Sample], candidate: dict[str, Sample]) -> tuple[TaskResult,
                                                                                                 TaskResult]:
    """Both sides' outcomes on the same documents, in document order."""
    if set(baseline) != set(candidate):
        raise StageError("accuracy", f"task {task.name}: baseline and candidate scored different documents "
                         f"({len(baseline)} vs {len(candidate)})")
    ids = sorted(baseline)
    differ = [d for d in ids if baseline[d].prompt_hash != candidate[d].prompt_hash]
    if differ:
        raise StageError("accuracy", f"task {task.name}: {len(differ)} documents got different prompts on the two "
                         f"sides (first: {differ[0]}); outcomes cannot be paired")

    def result(side: dict[str, Sample]) -> TaskResult:
        return TaskResult(task.name, "lm-eval", len(ids), [side[d].value == 1.0 for d in ids],
                          [side[d].answer for d in ids])

    return result(baseline), result(candidate)
