"""The build stage for the GPU backends on this CPU machine: real ModelOpt exports, then
trtllm-build (the strict stand-in that checks argv against TensorRT-LLM 1.2's flag list) and
the PyTorch-backend options. The manifest's compatibility key comes from the engine's config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.bundle import compatibility_problems, facts_for_target, load_bundle
from tests.conftest import ROOT
from tests.tiny_model import save_tiny_checkpoint

pytestmark = pytest.mark.integration
STAND_IN = ROOT / "tests/data/trtllm"


def recipe(tmp: Path, backend: str, gpu: str, algo: str, kv: str, tp: int) -> Path:
    data = {
        "name": f"tiny-{backend}", "source": {"path": "src", "dtype": "float32"},
        "target": {"gpu": gpu, "tensor_parallel": tp},
        "quantize": {"algo": algo, "kv_cache": kv, "calibration": {"samples": 4, "seq_len": 32}},
        "build": {"backend": backend, "max_batch_size": 8, "max_seq_len": 256, "max_num_tokens": 512,
                  "tensorrt": {"timing_cache": str(tmp / "timing.cache")}},
        "gates": {"accuracy": {"enabled": False}, "throughput": {"enabled": False}},
        "release": {"enabled": False, "model_name": "tiny"}, "publish": {"enabled": False},
    }
    p = tmp / f"{backend}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gpu-backends")
    save_tiny_checkpoint(d / "src")
    return d


def run(path: Path, artifacts: Path) -> dict[str, object]:
    env = {**os.environ, "PATH": f"{STAND_IN}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "run", str(path), "--json", "--artifacts",
                        str(artifacts)], capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(json.loads(r.stdout))


def bundle_of(summary: dict[str, object]) -> Path:
    build = next(s for s in summary["stages"] if s["name"] == "build")  # type: ignore[attr-defined, index]
    return Path(build["outputs"]["bundle"])


def test_tensorrt_engine_bundle_tp2(workspace: Path) -> None:
    summary = run(recipe(workspace, "tensorrt", "h100", "fp8", "fp8", 2), workspace / "artifacts")
    bundle = load_bundle(bundle_of(summary))
    files = {f["path"] for f in bundle.manifest["files"]}
    assert {"engine/config.json", "engine/rank0.engine", "engine/rank1.engine", "tokenizer/tokenizer.json"} <= files
    c = bundle.compatibility
    assert (c["backend"], c["gpu"], c["sm"], c["tensor_parallel"]) == ("tensorrt", "h100", 90, 2)
    assert c["tensorrt_llm"].startswith("1.2")
    assert (bundle.dir.parent / "trtllm-build.log").is_file(), "the build log is kept with the stage output"
    assert compatibility_problems(c, facts_for_target("h100")) == []
    assert "sm90" in compatibility_problems(c, facts_for_target("b200"))[0]


def test_pytorch_bundle_options(workspace: Path) -> None:
    summary = run(recipe(workspace, "pytorch", "b200", "nvfp4", "fp8", 1), workspace / "artifacts")
    bundle = load_bundle(bundle_of(summary))
    options = yaml.safe_load((bundle.dir / "llm_api_options.yaml").read_text())
    assert options["max_batch_size"] == 8 and options["kv_cache_config"]["dtype"] == "fp8"
    verified = bundle.manifest["provenance"]["verified_on_runtime"]
    assert isinstance(verified, str) and verified.startswith("not verified on a runtime")
    assert (bundle.dir / "checkpoint/hf_quant_config.json").is_file()
