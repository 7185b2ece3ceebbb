"""Real ModelOpt on CPU: exports, the dequantizing loader, NVFP4 emulation (tiny seeded Llama)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from pipeline.errors import QuantizeError
from pipeline.quant.calibration import load_calibration
from pipeline.quant.loader import load_unified
from pipeline.quant.nvfp4_emu import cpu_nvfp4
from pipeline.quant.quantize import quantize_checkpoint
from pipeline.quant.state import STATE_FILE, restore_state
from tests.tiny_model import save_tiny_checkpoint

pytestmark = pytest.mark.integration
VARIANTS = {"fp8": ("fp8", "none"), "fp8-kv": ("fp8", "fp8"), "nvfp4": ("nvfp4", "none")}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # fp32 weights (bf16 weights sit on fp8 rounding ties) and a confident head (stable top-1)
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "src", peaky=20.0)


@pytest.fixture(scope="module")
def tokenizer(source: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


@pytest.fixture(scope="module")
def quantized(source: Path, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cal = load_calibration("builtin:pydoc", tokenizer, samples=8, seq_len=64, seed=1)
    out = {}
    for name, (algo, kv) in VARIANTS.items():
        d = tmp_path_factory.mktemp(name)
        quantize_checkpoint(source, d, algo=algo, kv_cache=kv, calibration=cal, exports={"unified", "trtllm"},
                            tensor_parallel=2, dtype="float32")
        out[name] = d
    return out


def tensors(path: Path) -> dict[str, torch.dtype]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator


@pytest.mark.parametrize("name", list(VARIANTS))
def test_unified_export(quantized: dict[str, Path], name: str) -> None:
    algo, kv = VARIANTS[name]
    d = quantized[name] / "unified"
    q = json.loads((d / "hf_quant_config.json").read_text())["quantization"]
    assert q["quant_algo"] == {"fp8": "FP8", "nvfp4": "NVFP4"}[algo]
    assert q["kv_cache_quant_algo"] == ({"fp8": "FP8"}.get(kv))
    assert json.loads((d / "config.json").read_text())["quantization_config"]["quant_method"] == "modelopt"
    dtypes = tensors(d / "model.safetensors")
    w = "model.layers.0.self_attn.q_proj"
    if algo == "fp8":
        assert dtypes[f"{w}.weight"] == "F8_E4M3"
        assert {f"{w}.weight_scale", f"{w}.input_scale"} <= set(dtypes)
    else:
        assert dtypes[f"{w}.weight"] == "U8"  # two e2m1 values per byte
        assert dtypes[f"{w}.weight_scale"] == "F8_E4M3" and dtypes[f"{w}.weight_scale_2"] == "F32"
    if kv == "fp8":
        assert "model.layers.0.self_attn.k_proj.k_scale" in dtypes
        assert "model.layers.0.self_attn.v_proj.v_scale" in dtypes
    assert (d / "tokenizer.json").is_file(), "the export is self-contained"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_trtllm_checkpoint_tp2(source: Path, quantized: dict[str, Path], name: str) -> None:
    d = quantized[name] / "trtllm"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["mapping"]["tp_size"] == 2 and cfg["mapping"]["world_size"] == 2
    assert cfg["quantization"]["quant_algo"] == {"fp8": "FP8", "nvfp4": "NVFP4"}[VARIANTS[name][0]]
    assert (d / "rank0.safetensors").is_file() and (d / "rank1.safetensors").is_file()
    # ModelOpt 0.47 drops rope_theta from transformers 5 configs; the export puts it back
    hf = json.loads((source / "config.json").read_text())
    theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))
    assert theta is not None and cfg["rotary_base"] == pytest.approx(float(theta))


def test_quantize_record(quantized: dict[str, Path]) -> None:
    rec = json.loads((quantized["fp8-kv"] / "quantize.json").read_text())
    assert rec["calibration"]["digest"] and rec["versions"]["nvidia-modelopt"] == "0.47.0"
    assert {"weight_quantizer", "input_quantizer", "k_bmm_quantizer", "v_bmm_quantizer"} <= set(rec["amax"])
    assert rec["quant_config"]["algorithm"] == "max"


def compare(fq: Any, model: Any, batches: list[torch.Tensor]) -> tuple[float, float]:
    agree = total = 0
    err = 0.0
    with torch.no_grad(), cpu_nvfp4():
        for ids in batches:
            a, b = fq(ids).logits, model(ids).logits
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[1]
            err = max(err, float((a - b).abs().max()))
    return agree / total, err


def fake_quant(source: Path, d: Path, *, weights_only: bool = False) -> Any:
    import modelopt.torch.quantization as mtq
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    model = restore_state(model, d / STATE_FILE)
    if weights_only:
        mtq.disable_quantizer(model, "*input_quantizer")
    # The export gives layers that TensorRT-LLM fuses (q/k/v, gate/up) one shared global scale;
    # do the same here so the fake-quant model computes what the export stores.
    for layer in model.model.layers:
        for group in ((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                      (layer.mlp.gate_proj, layer.mlp.up_proj)):
            shared = torch.stack([m.weight_quantizer.amax.max() for m in group]).max()
            for m in group:
                if m.weight_quantizer.block_sizes:  # NVFP4: the global (per-tensor) amax is shared
                    m.weight_quantizer.amax = shared.expand_as(m.weight_quantizer.amax).clone()
    return model


@pytest.fixture(scope="module")
def eval_batches(tokenizer: Any) -> list[torch.Tensor]:
    return load_calibration("builtin:pydoc", tokenizer, samples=8, seq_len=64, seed=99).batches


def test_loader_matches_fake_quant_fp8(source: Path, quantized: dict[str, Path],
                                       eval_batches: list[torch.Tensor]) -> None:
    model, _ = load_unified(quantized["fp8"] / "unified")
    top1, err = compare(fake_quant(source, quantized["fp8"]), model, eval_batches)
    # measured: 1.0 and 1e-3 (logits range about 13)
    assert top1 >= 0.98 and err <= 0.01, (top1, err)


def test_loader_matches_fake_quant_nvfp4(source: Path, quantized: dict[str, Path],
                                         eval_batches: list[torch.Tensor]) -> None:
    """NVFP4 weights dequantize exactly; fake-quant evaluation runs on CPU through the emulation."""
    model, _ = load_unified(quantized["nvfp4"] / "unified", activations=False)
    top1, err = compare(fake_quant(source, quantized["nvfp4"], weights_only=True), model, eval_batches)
    assert top1 >= 0.98 and err <= 0.01, (top1, err)


def test_loader_kv_emulation_close(source: Path, quantized: dict[str, Path], eval_batches: list[torch.Tensor]) -> None:
    """K/V are quantized at the projection output (ModelOpt quantizes after RoPE): close, not exact."""
    model, _ = load_unified(quantized["fp8-kv"] / "unified")
    top1, _ = compare(fake_quant(source, quantized["fp8-kv"]), model, eval_batches)
    assert top1 >= 0.95, top1


def test_plain_transformers_load_is_wrong(source: Path, quantized: dict[str, Path],
                                          eval_batches: list[torch.Tensor]) -> None:
    """Why the loader exists: transformers drops the scales of a ModelOpt FP8 export."""
    from transformers import AutoModelForCausalLM

    naive = AutoModelForCausalLM.from_pretrained(quantized["fp8"] / "unified", dtype=torch.float32).eval()
    top1, _ = compare(fake_quant(source, quantized["fp8"]), naive, eval_batches)
    assert top1 < 0.5, top1


def test_nvfp4_fake_quant_fails_on_cpu_without_emulation(source: Path, quantized: dict[str, Path],
                                                         eval_batches: list[torch.Tensor]) -> None:
    model = fake_quant(source, quantized["nvfp4"])
    with pytest.raises(AssertionError, match="CUDA"), torch.no_grad():
        model(eval_batches[0])


def test_loader_refuses_unknown_format(quantized: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "u"
    shutil.copytree(quantized["fp8"] / "unified", d)
    cfg = json.loads((d / "hf_quant_config.json").read_text())
    cfg["quantization"]["quant_algo"] = "W4A16_AWQ"
    (d / "hf_quant_config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizeError, match=r"W4A16_AWQ .* is not supported by the CPU loader"):
        load_unified(d)


def test_calibration_is_deterministic(tokenizer: Any) -> None:
    a = load_calibration("builtin:pydoc", tokenizer, samples=4, seq_len=32, seed=3)
    b = load_calibration("builtin:pydoc", tokenizer, samples=4, seq_len=32, seed=3)
    c = load_calibration("builtin:pydoc", tokenizer, samples=5, seq_len=32, seed=3)
    assert a.digest == b.digest and all(torch.equal(x, y) for x, y in zip(a.batches, b.batches, strict=True))
    assert c.digest != a.digest
    with pytest.raises(QuantizeError, match="not found"):
        load_calibration("/nope.txt", tokenizer, samples=1, seq_len=8, seed=0)
