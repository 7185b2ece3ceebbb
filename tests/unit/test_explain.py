"""`trtbuild plan RECIPE --explain DIR` on every shipped recipe: exit 0, a Triton repository that
holds every parameter upstream requires, no phase beyond a GPU's memory; and planted faults."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.recipe.hardware import GPUS
from pipeline.repository.base import parse_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
GPU_RECIPES = [r for r in RECIPES if "cpu" not in r]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The real entry point (its error table and exit codes), output captured."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # the hopper recipes mount ${PWD} into their containers: artifacts and trtbuild itself must be
    # under it, as when trtbuild runs from the checkout (plan only reads artifacts/, never writes)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PWD", str(ROOT))


def explain(tmp: Path, recipe: Path, capsys: pytest.CaptureFixture[str],
            artifacts: Path | None = None) -> tuple[int, str, dict[str, Any]]:
    code, output = cli(capsys, "plan", str(recipe), "--explain", str(tmp / "out"), "--artifacts",
                       str(artifacts or ROOT / "artifacts"))
    doc = json.loads((tmp / "out" / "explain.json").read_text()) if (tmp / "out" / "explain.json").exists() else {}
    return code, output, doc


def config_dicts(repo: Path) -> dict[str, dict[str, Any]]:
    from google.protobuf import json_format

    out = {}
    for cfg in repo.glob("*/config.pbtxt"):
        msg = parse_config(cfg.read_text())
        out[cfg.parent.name] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def role_of(name: str, cfg: dict[str, Any]) -> str:
    if cfg.get("platform") == "ensemble":
        return "ensemble"
    for role in ("preprocessing", "postprocessing", "tensorrt_llm"):
        if name.endswith("_" + role):
            return role
    return "llmapi" if cfg.get("backend") == "python" else "reference"


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_explains_cleanly(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import upstream

    code, output, doc = explain(tmp_path, ROOT / "recipes" / name, capsys)
    assert code == 0, output
    assert doc["problems"] == [] and [s["name"] for s in doc["stages"]] == [
        "fetch", "quantize", "build", "tune", "accuracy", "throughput", "release", "publish"]
    for st in doc["stages"]:
        for p in st["processes"]:
            assert set(p) >= {"role", "argv", "env", "gpus", "gpu_memory_gib", "phase"}
            assert all(not any(c in e for c in "=/") for e in p["env"])  # names, never values
    # no two processes of one phase beyond a GPU's memory (recomputed from the file)
    mem = GPUS[doc["target"]["gpu"]].memory_gib or 0
    for st in doc["stages"]:
        use: dict[tuple[str, int], float] = defaultdict(float)
        for p in st["processes"]:
            for g in p["gpus"]:
                use[(p["phase"], g)] += p["gpu_memory_gib"]
        assert all(v <= mem for v in use.values()) or not mem, (st["name"], dict(use))
    # every config parses and holds what upstream requires
    configs = config_dicts(tmp_path / "out" / "triton_repo")
    assert configs
    for model, cfg in configs.items():
        role = role_of(model, cfg)
        params = set(cfg.get("parameters") or {})
        if role in ("tensorrt_llm", "preprocessing", "postprocessing"):
            missing = set(upstream.required_triton_parameters(role)) - params
            assert not missing, (model, sorted(missing))
        assert upstream.check_triton_config(role, cfg) == [], model
        assert "${" not in json.dumps(cfg)


def test_llama70b_plan_shows_the_gpu_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output, doc = explain(tmp_path, ROOT / "recipes" / "llama70b.yaml", capsys)
    assert code == 0, output
    stages = {s["name"]: s for s in doc["stages"]}
    tp = stages["throughput"]["processes"]
    vllm = next(p for p in tp if p["role"].startswith("vLLM"))
    assert vllm["argv"][vllm["argv"].index("--tensor-parallel-size") + 1] == "2"
    assert vllm["gpus"] == [0, 1] and vllm["phase"] == "baseline"
    serve = next(p for p in tp if p["role"].startswith("trtllm-serve"))
    assert serve["phase"] == "candidate" and "--kv_cache_free_gpu_memory_fraction" in serve["argv"]
    # the accuracy baseline serves the bf16 source: TP 2, and never beside the candidate
    acc = stages["accuracy"]["processes"]
    assert {p["phase"] for p in acc if p["gpus"]} == {"lm-eval baseline", "lm-eval candidate"}
    build = stages["build"]["processes"][0]
    assert "trtllm-build" in build["argv"] and build["argv"][1] == "run"
    assert build["argv"][2] == "--init" and build["argv"][3] == "--name"  # stopped by name, PID 1 handles signals
    assert "--init" in serve["argv"] and "--network" in serve["argv"]
    assert doc["switch"]["strategy"] == "drain"
    quant = stages["quantize"]["processes"]
    assert {p["phase"] for p in quant} >= {"calibrate", "export-trtllm", "export-unified"}
    assert (tmp_path / "out" / "triton_repo" / "llama70b" / "config.pbtxt").is_file()


def test_pytorch_recipe_writes_llm_api_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    code, output, _ = explain(tmp_path, ROOT / "recipes" / "llama70b-nvfp4-b200.yaml", capsys)
    assert code == 0, output
    opts = yaml.safe_load((tmp_path / "out" / "llm_api_options.yaml").read_text())
    assert opts["backend"] == "pytorch" and opts["tensor_parallel_size"] == 1
    assert (tmp_path / "out" / "triton_repo" / "llama70b-nvfp4-b200" / "1" / "model.yaml").is_file()


def _child(tmp: Path, body: str) -> Path:
    import shutil

    shutil.copytree(ROOT / "recipes" / "base", tmp / "base")
    p = tmp / "child.yaml"
    p.write_text("extends: base/hopper-trtllm.yaml\nname: child\nsource: {repo: meta-llama/Llama-3.3-70B-Instruct, "
                 "revision: main}\ntarget: {gpu: h100, tensor_parallel: 2}\nrelease: {model_name: child}\n" + body)
    return p


def test_planted_faults_are_problems_at_their_recipe_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # two servers forced onto the same GPUs, and a side-by-side switch two 70B engines cannot do
    p = _child(tmp_path, "gates:\n  throughput:\n    schedule: together\npublish:\n  switch: side-by-side\n")
    code, output, doc = explain(tmp_path, p, capsys)
    assert code == 1
    lines = list(doc["problems"])
    assert any(x.startswith(f"{p}:8: gates.throughput.schedule: together") for x in lines), lines
    assert any(x.startswith(f"{p}:10: publish.switch: two versions do not fit") for x in lines), lines
    assert "Traceback" not in output


def test_vllm_parallelism_beyond_the_runner_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _child(tmp_path, "gates:\n  throughput:\n    baseline:\n      tensor_parallel: 4\n")
    code, _, doc = explain(tmp_path, p, capsys)
    assert code == 1 and any("tensor_parallel: 4 exceeds the runner's 2 GPU(s)" in x for x in doc["problems"])


def test_validate_runs_the_same_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _child(tmp_path, "gates:\n  throughput:\n    schedule: together\n")
    code, output = cli(capsys, "validate", str(p))
    assert code == 1 and "gates.throughput.schedule: together" in output


def test_host_paths_a_container_cannot_see_are_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    # artifacts outside the ${PWD} volume: trtllm-build in the container would find no checkpoint
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    code, _, doc = explain(tmp_path, ROOT / "recipes" / "llama8b-fp8.yaml", capsys, artifacts=elsewhere)
    assert code == 1
    assert any("trtllm-build" in x and "is not inside a volume the container mounts" in x for x in doc["problems"])
