"""lm-eval plumbing without a server: the command line, reading `--log_samples` output (the format
lm-eval 0.4.13 writes, groups included), pairing and its refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import StageError
from pipeline.eval import gate, lmeval
from pipeline.recipe.schema import AccuracyGate

EP = lmeval.Endpoint("http://127.0.0.1:9", "candidate", Path("/models/tok"))


def write_run(d: Path, samples: dict[str, list[dict[str, Any]]], groups: dict[str, list[str]] | None = None,
              output_type: str = "generate_until") -> Path:
    """What `lm_eval --output_path d --log_samples` leaves: d/<model>/results_*.json + samples_<task>_*.jsonl."""
    sub = d / "candidate"
    sub.mkdir(parents=True)
    (sub / "results_2026-11-23T10-00-00.json").write_text(json.dumps({
        "results": {}, "group_subtasks": groups or {t: [] for t in samples},
        "configs": {t: {"output_type": output_type} for t in samples}}))
    for task, rows in samples.items():
        (sub / f"samples_{task}_2026-11-23T10-00-00.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def rows(values: list[float], *, metric: str = "exact_match", filt: str = "strip",
         salt: str = "") -> list[dict[str, Any]]:
    return [{"doc_id": i, "filter": filt, "metrics": [metric], metric: v, "prompt_hash": f"p{i}{salt}",
             "filtered_resps": [str(v)]} for i, v in enumerate(values)]


def test_argv_speaks_local_completions_with_token_ids() -> None:
    s = lmeval.Settings(python="/py", num_concurrent=8, max_length=1024)
    tasks = [lmeval.LmEvalTask("gsm8k", "gsm8k", "exact_match", "strict-match", 5, 100)]
    cmd = lmeval.argv(s, tasks, EP, Path("/out"))
    assert cmd[:5] == ["/py", "-m", "lm_eval", "--model", "local-completions"]
    args = dict(kv.split("=", 1) for kv in cmd[cmd.index("--model_args") + 1].split(","))
    assert args["base_url"] == "http://127.0.0.1:9/v1/completions"
    assert args["model"] == "candidate" and args["tokenizer"] == "/models/tok"
    assert args["tokenizer_backend"] == "huggingface" and args["tokenized_requests"] == "True"
    assert args["num_concurrent"] == "8" and args["max_length"] == "1024"
    for flag, value in (("--tasks", "gsm8k"), ("--num_fewshot", "5"), ("--limit", "100"), ("--output_path", "/out")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--log_samples" in cmd


def test_groups_split_on_global_flags() -> None:
    a = lmeval.LmEvalTask("a", "a", num_fewshot=5)
    b = lmeval.LmEvalTask("b", "b", num_fewshot=5)
    c = lmeval.LmEvalTask("c", "c", num_fewshot=0)
    assert lmeval.groups([a, b, c]) == [[a, b], [c]]


def test_pairs_per_document_and_mcnemar_sees_the_drop(tmp_path: Path) -> None:
    task = lmeval.LmEvalTask("copy", "trtbuild_copy", "exact_match")
    base = lmeval.read_samples(write_run(tmp_path / "b", {"trtbuild_copy": rows([1.0] * 30)}), task)
    cand = lmeval.read_samples(write_run(tmp_path / "c", {"trtbuild_copy": rows([1.0] * 18 + [0.0] * 12)}), task)
    b, c = lmeval.pair(task, base, cand)
    assert (b.n, b.accuracy, c.accuracy) == (30, 100.0, 60.0)
    report = gate.decide(AccuracyGate(max_accuracy_drop=5.0), None, [(b, c)])
    assert not report.passed and report.failed[0].startswith("copy accuracy drop")
    same = gate.decide(AccuracyGate(max_accuracy_drop=5.0), None, [(b, b)])
    assert same.passed


def test_group_members_are_all_read(tmp_path: Path) -> None:
    task = lmeval.LmEvalTask("mmlu", "mmlu_generative", "exact_match", "get_response")
    run = write_run(tmp_path, {"mmlu_anatomy": rows([1.0, 0.0], filt="get_response"),
                               "mmlu_astronomy": rows([1.0], filt="get_response")},
                    groups={"mmlu_generative": ["stem"], "stem": ["mmlu_anatomy", "mmlu_astronomy"]})
    got = lmeval.read_samples(run, task)
    assert sorted(got) == ["mmlu_anatomy/0", "mmlu_anatomy/1", "mmlu_astronomy/0"]


def test_filter_must_be_chosen_when_several(tmp_path: Path) -> None:
    two = rows([1.0], filt="strict-match") + rows([0.0], filt="flexible-extract")
    run = write_run(tmp_path, {"gsm8k": two})
    with pytest.raises(StageError, match="filter 'None' not among"):
        lmeval.read_samples(run, lmeval.LmEvalTask("gsm8k", "gsm8k", "exact_match"))
    got = lmeval.read_samples(run, lmeval.LmEvalTask("gsm8k", "gsm8k", "exact_match", "flexible-extract"))
    assert [s.value for s in got.values()] == [0.0]


def test_refuses_non_binary_metric_and_unknown_metric(tmp_path: Path) -> None:
    run = write_run(tmp_path, {"t": rows([0.5], metric="f1")})
    with pytest.raises(StageError, match="not right/wrong"):
        lmeval.read_samples(run, lmeval.LmEvalTask("t", "t", "f1"))
    with pytest.raises(StageError, match="metric 'acc' not in"):
        lmeval.read_samples(run, lmeval.LmEvalTask("t", "t", "acc"))


def test_pairing_refuses_different_prompts_or_documents(tmp_path: Path) -> None:
    task = lmeval.LmEvalTask("copy", "trtbuild_copy", "exact_match")
    base = lmeval.read_samples(write_run(tmp_path / "b", {"trtbuild_copy": rows([1.0, 1.0])}), task)
    other = lmeval.read_samples(write_run(tmp_path / "c", {"trtbuild_copy": rows([1.0, 1.0], salt="x")}), task)
    fewer = lmeval.read_samples(write_run(tmp_path / "d", {"trtbuild_copy": rows([1.0])}), task)
    with pytest.raises(StageError, match="different prompts"):
        lmeval.pair(task, base, other)
    with pytest.raises(StageError, match="different documents"):
        lmeval.pair(task, base, fewer)


def test_missing_samples_name_the_task(tmp_path: Path) -> None:
    run = write_run(tmp_path, {"other": rows([1.0])})
    with pytest.raises(StageError, match="no samples for task 'mmlu'"):
        lmeval.read_samples(run, lmeval.LmEvalTask("mmlu", "mmlu"))


def test_missing_interpreter_is_one_line(tmp_path: Path) -> None:
    s = lmeval.Settings(python=str(tmp_path / "nope" / "python"))
    with pytest.raises(StageError, match=r"lm-eval interpreter .* not found"):
        lmeval.run_side(s, [lmeval.LmEvalTask("t", "t")], EP, tmp_path, label="candidate")


def test_recipe_model_args_are_appended() -> None:
    s = lmeval.Settings(python="/py", model_args=(("add_bos_token", "True"), ("max_gen_toks", "64")))
    cmd = lmeval.argv(s, [lmeval.LmEvalTask("t", "t")], EP, Path("/out"))
    args = dict(kv.split("=", 1) for kv in cmd[cmd.index("--model_args") + 1].split(","))
    assert (args["add_bos_token"], args["max_gen_toks"]) == ("True", "64")


def test_baseline_cache_round_trip_and_keys(tmp_path: Path) -> None:
    from pipeline.eval import lmeval_cache

    side = lmeval.SideRun(12.5, {"copy": {"trtbuild_copy/0": lmeval.Sample(0, 1.0, "p0", '["apple"]')}},
                          {"trtbuild_copy": "generate_until"})
    key = {"source": "abc", "tasks": [["copy", "trtbuild_copy", "exact_match", None, None, 30]]}
    path = lmeval_cache.path_for(tmp_path, key)
    assert lmeval_cache.load(path) is None
    lmeval_cache.save(path, side)
    assert lmeval_cache.load(path) == side
    assert lmeval_cache.path_for(tmp_path, {**key, "source": "abd"}) != path  # another source, another entry
    path.write_text("{not json")
    assert lmeval_cache.load(path) is None  # unreadable: recomputed, not an error
    import importlib.metadata
    import sys

    assert lmeval_cache.harness_version(sys.executable) == importlib.metadata.version("lm-eval")
    assert lmeval_cache.harness_version(str(tmp_path / "no-python")) == "unknown"


def test_interrupted_lm_eval_does_not_outlive_the_gate(tmp_path: Path) -> None:
    """lm-eval runs in its own session, so Ctrl-C does not reach it: stopping it is our job."""
    import sys

    from pipeline.eval.lmeval import _invoke
    from tests.fake_docker import assert_gone, ctrl_c_after

    pidfile = tmp_path / "lm-eval.pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"

    with ctrl_c_after(2), pytest.raises(KeyboardInterrupt):
        _invoke([sys.executable, "-c", code], tmp_path / "log", cwd=tmp_path, timeout=60, label="candidate",
                on_line=None)
    assert_gone(int(pidfile.read_text()), "lm-eval kept running after Ctrl-C")
