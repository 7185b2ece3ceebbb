"""FP8 + FP8 KV on tiny random Llama 3.1, Qwen2.5 and Mistral v0.3 look-alikes: both exports (real ModelOpt, CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.errors import QuantizeError
from pipeline.quant.calibration import load_calibration
from pipeline.quant.memory import GiB, MemoryPlan
from pipeline.quant.quantize import quantize_checkpoint, trtllm_decoder_type
from tests.tiny_model import VOCAB, make_tokenizer

pytestmark = pytest.mark.integration

COMMON = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
          "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "tie_word_embeddings": False}
# the RoPE of the real models: Llama 3.1 (llama3 scaling), Qwen2.5-7B and Mistral-7B v0.3 (theta 1e6)
ARCHS: dict[str, tuple[str, dict[str, Any], str]] = {
    "llama": ("LlamaConfig", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 128}}, "LlamaForCausalLM"),
    # Qwen2 always has bias on q/k/v; Qwen2.5-7B does not tie its embeddings
    "qwen2": ("Qwen2Config", {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                              "use_sliding_window": False}, "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                                  "sliding_window": None}, "MistralForCausalLM"),
}
# ModelOpt keeps the HF class name as `architecture`; TensorRT-LLM's MODEL_MAP builds MistralForCausalLM
# as its LLaMA model and Qwen2ForCausalLM as QWen (tensorrt_llm/models/__init__.py at 02267d3d)
TRTLLM_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def make_source(root: Path, arch: str, tokenizer: Any) -> Path:
    import transformers
    from transformers import AutoModelForCausalLM

    cls_name, extra, _ = ARCHS[arch]
    cfg = getattr(transformers, cls_name)(**COMMON, **extra)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(root / arch)
    tokenizer.save_pretrained(root / arch)
    return root / arch


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("archs")
    cal = load_calibration("builtin:pydoc", tokenizer, samples=4, seq_len=32, seed=1)
    out = {}
    for arch in ARCHS:
        src = make_source(root / "src", arch, tokenizer)
        quantize_checkpoint(src, root / "q" / arch, algo="fp8", kv_cache="fp8", calibration=cal,
                            exports={"unified", "trtllm"}, dtype="float32")
        out[arch] = (src, root / "q" / arch)
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_trtllm_checkpoint_architecture_and_rope(quantized: dict[str, tuple[Path, Path]], arch: str) -> None:
    src, q = quantized[arch]
    cfg = json.loads((q / "trtllm" / "config.json").read_text())
    assert cfg["architecture"] == TRTLLM_ARCH[arch]
    assert cfg["quantization"]["quant_algo"] == "FP8" and cfg["quantization"]["kv_cache_quant_algo"] == "FP8"
    theta = json.loads((src / "config.json").read_text())["rope_parameters"]["rope_theta"]
    assert cfg["rotary_base"] == pytest.approx(theta)
    if arch == "llama":
        assert cfg["rotary_scaling"]["type"] == "llama3" and cfg["rotary_scaling"]["factor"] == 8.0
    from safetensors import safe_open

    with safe_open(str(q / "trtllm" / "rank0.safetensors"), "pt") as f:
        has_qkv_bias = "transformer.layers.0.attention.qkv.bias" in f.keys()  # noqa: SIM118
    assert has_qkv_bias == (arch == "qwen2")  # Qwen2 has bias on q/k/v (TensorRT-LLM's QWen attn_bias=True)
    assert cfg.get("qwen_type") == ("qwen2" if arch == "qwen2" else None)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_unified_config_has_top_level_rope(quantized: dict[str, tuple[Path, Path]], arch: str) -> None:
    src, q = quantized[arch]
    cfg = json.loads((q / "unified" / "config.json").read_text())
    hf = json.loads((src / "config.json").read_text())
    assert cfg["architectures"] == [ARCHS[arch][2]]
    assert cfg["rope_theta"] == hf["rope_parameters"]["rope_theta"], "transformers 4.x readers default to 10000"
    if arch == "llama":
        assert cfg["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 128}
    else:
        assert "rope_scaling" not in cfg
    assert cfg["rope_parameters"] == hf["rope_parameters"]
    rec = json.loads((q / "quantize.json").read_text())
    assert rec["config_fixes"]["unified"][0].startswith("rope_theta=")
    assert rec["decoder_type"] == {"llama": "llama", "qwen2": "qwen", "mistral": "llama"}[arch]


def test_unmapped_architecture_is_refused_by_name() -> None:
    class GPTNeoXForCausalLM(torch.nn.Module):
        pass

    with pytest.raises(QuantizeError, match=r"GPTNeoXForCausalLM has no TensorRT-LLM decoder type in ModelOpt "
                                            r"0\.47\.\d+'s MODEL_NAME_TO_TYPE .*export 'unified'"):
        trtllm_decoder_type(GPTNeoXForCausalLM())


def test_offloaded_calibration_exports_trtllm_from_a_cpu_model(tmp_path: Path, tokenizer: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration planned as GPUs + CPU offload: the TensorRT-LLM export gets a model materialized on the CPU."""
    import pipeline.quant.quantize as qmod

    src = make_source(tmp_path / "src", "llama", tokenizer)
    offload = MemoryPlan("cuda", "auto", {0: 72 * GiB, 1: 72 * GiB, "cpu": 400 * GiB}, 150 * GiB)
    monkeypatch.setattr(qmod, "available", lambda: ([80 * GiB, 80 * GiB], 512 * GiB))
    monkeypatch.setattr(qmod, "plan_memory", lambda *a, **k: offload)
    loads: list[tuple[str, str | None, list[str]]] = []
    real_load = qmod._load

    def spy(src_dir: Path, dtype: Any, device: str, device_map: str | None, max_memory: dict[Any, int]) -> Any:
        loads.append((device, device_map, sorted(map(str, max_memory)) if device_map else []))
        return real_load(src_dir, dtype, "cpu", None, {})  # no GPU here: the spy records, CPU loads

    monkeypatch.setattr(qmod, "_load", spy)
    cal = load_calibration("builtin:pydoc", tokenizer, samples=2, seq_len=32, seed=1)
    rec = quantize_checkpoint(src, tmp_path / "q", algo="fp8", kv_cache="fp8", calibration=cal,
                              exports={"unified", "trtllm"}, device="cuda", dtype="bfloat16")
    # calibration, then the exports in sorted order: trtllm, unified
    offloaded = ("cuda", "auto", ["0", "1", "cpu"])
    assert loads == [offloaded, ("cpu", None, []), offloaded]
    assert rec["export_placement"]["trtllm"]["device"] == "cpu"
    assert rec["export_placement"]["unified"]["device_map"] == "auto"
    assert (tmp_path / "q" / "trtllm" / "rank0.safetensors").is_file()
