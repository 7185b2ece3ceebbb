"""The accuracy gate on real models: a good FP8 export passes; corrupted scales fail; NVFP4 fails
where the recipe demands FP8-level agreement. Tasks: McNemar catches a model that lost answers."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.backends.reference.runtime import ReferenceRuntime
from pipeline.eval import gate, tasks, teacher_forced, textset
from pipeline.quant.calibration import load_calibration
from pipeline.quant.loader import load_unified
from pipeline.quant.quantize import quantize_checkpoint
from pipeline.recipe.schema import AccuracyGate
from tests.tiny_model import save_tiny_checkpoint

pytestmark = pytest.mark.integration
# FP8-level demands, as a recipe for an FP8 deployment would set them
FP8_LEVEL = AccuracyGate(max_ppl_ratio=1.05, min_top1_agreement=0.9, max_kl=0.05, max_accuracy_drop=5.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("acc")
    src = save_tiny_checkpoint(d / "src", peaky=20.0)
    tok = AutoTokenizer.from_pretrained(src)
    cal = load_calibration("builtin:pydoc", tok, samples=8, seq_len=64, seed=1)
    out = {}
    for algo in ("fp8", "nvfp4"):
        quantize_checkpoint(src, d / algo, algo=algo, kv_cache="none", calibration=cal, exports={"unified"},
                            dtype="float32")
        out[algo] = d / algo / "unified"
    corrupt = d / "corrupt"
    shutil.copytree(out["fp8"], corrupt)
    st = load_file(corrupt / "model.safetensors")
    for k in [k for k in st if k.endswith(".weight_scale") and "mlp" in k]:
        st[k] = st[k] * 3.0  # planted fault: wrong scales, still a well-formed checkpoint
    save_file(st, corrupt / "model.safetensors", metadata={"format": "pt"})
    out["corrupt"] = corrupt
    base = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    seqs = textset.windows(tok, textset.load_text("builtin:pydoc"), count=16, length=64)
    return {"base": ReferenceRuntime(base, tok), "paths": out, "seqs": seqs, "tok": tok}


def judge(setup: dict[str, Any], which: str, cfg: AccuracyGate) -> gate.AccuracyReport:
    model, tok = load_unified(setup["paths"][which], activations=True)
    cand = ReferenceRuntime(model, tok)
    tf = teacher_forced.compare(setup["base"].score, cand.score, setup["seqs"])
    return gate.decide(cfg, tf, [])


def test_good_fp8_passes(setup: dict[str, Any]) -> None:
    rep = judge(setup, "fp8", FP8_LEVEL)
    assert rep.passed, rep.failed
    assert json.loads(json.dumps(rep.to_json()))["passed"] is True


def test_corrupted_scales_fail(setup: dict[str, Any]) -> None:
    rep = judge(setup, "corrupt", FP8_LEVEL)
    assert not rep.passed
    assert any(line.startswith("perplexity ratio") for line in rep.failed)


def test_nvfp4_fails_fp8_level_demands(setup: dict[str, Any]) -> None:
    rep = judge(setup, "nvfp4", FP8_LEVEL)
    assert not rep.passed, rep.to_json()["teacher_forced"]


def test_task_drop_caught_by_mcnemar() -> None:
    """A candidate that answers the copy task wrongly fails; the same candidate passes against itself."""
    items = tasks.load_items("builtin:copy")

    def good(p: str, n: int) -> str:
        return p.rsplit("Input: ", 1)[-1].split("\n", maxsplit=1)[0] + "\n"  # a perfect copier

    def broken(p: str, n: int) -> str:
        return "nothing\n"

    b = tasks.run_task("copy", "exact-match", items, tasks.one_by_one(good))
    c = tasks.run_task("copy", "exact-match", items, tasks.one_by_one(broken))
    assert b.accuracy == 100.0 and c.accuracy == 0.0
    rep = gate.decide(FP8_LEVEL, None, [(b, c)])
    assert not rep.passed and "McNemar" in rep.failed[0]
    assert gate.decide(FP8_LEVEL, None, [(b, b)]).passed
