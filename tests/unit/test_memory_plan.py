"""Memory plans for calibration, from config.json alone."""

from __future__ import annotations

import pytest

from pipeline.errors import QuantizeError
from pipeline.quant.memory import GiB, estimate_bytes, export_placement, parameter_count, plan_memory

LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
H100 = 80 * GiB


def test_parameter_counts_match_published_sizes() -> None:
    assert parameter_count(LLAMA_70B) / 1e9 == pytest.approx(70.55, abs=0.1)
    assert parameter_count(LLAMA_8B) / 1e9 == pytest.approx(8.03, abs=0.05)


def test_70b_bf16_needs_about_141_gb() -> None:
    weights = parameter_count(LLAMA_70B) * 2
    assert weights / 1e9 == pytest.approx(141, abs=1)
    assert estimate_bytes(LLAMA_70B) > weights


def test_plans() -> None:
    assert plan_memory(LLAMA_8B, gpus=[H100], cpu_free=64 * GiB).device_map is None
    four = plan_memory(LLAMA_70B, gpus=[H100] * 4, cpu_free=64 * GiB)
    assert four.device == "cuda" and four.device_map == "auto" and set(four.max_memory) == {0, 1, 2, 3}
    two = plan_memory(LLAMA_70B, gpus=[H100, H100], cpu_free=64 * GiB)  # 2x80 GB < 141 GB + headroom
    assert set(two.max_memory) == {0, 1, "cpu"}
    offload = plan_memory(LLAMA_70B, gpus=[H100], cpu_free=200 * GiB)
    assert "cpu" in offload.max_memory


def test_refusal_says_what_it_needs_and_found() -> None:
    with pytest.raises(QuantizeError) as e:
        plan_memory(LLAMA_70B, gpus=[H100], cpu_free=32 * GiB)
    msg = str(e.value)
    assert "calibration needs ~1" in msg and "70.6B parameters" in msg
    assert "found 1 GPU(s) with 80 GiB free and 32 GiB free CPU RAM" in msg


def test_llama70b_on_two_h100s_offloads_calibration_and_exports_trtllm_from_cpu() -> None:
    """ModelOpt's TensorRT-LLM export reads module weights directly: an offloaded model gives it nothing."""
    plan = plan_memory(LLAMA_70B, gpus=[H100, H100], cpu_free=512 * GiB)
    assert plan.device == "cuda" and plan.device_map == "auto" and "cpu" in plan.max_memory
    unified = export_placement(plan, "unified", config=LLAMA_70B, cpu_free=512 * GiB)
    assert (unified.device, unified.device_map, unified.max_memory) == ("cuda", "auto", plan.max_memory)
    trtllm = export_placement(plan, "trtllm", config=LLAMA_70B, cpu_free=512 * GiB)
    assert trtllm.device == "cpu" and trtllm.device_map is None and set(trtllm.max_memory) == {"cpu"}
    # bf16 weights (141 GB) plus the fp8 weights the export writes, with 10% slack
    assert trtllm.need_bytes / 1e9 == pytest.approx(141 * 1.5 * 1.1, rel=0.02)
    assert "materialized on the CPU" in trtllm.describe() and "offload" in trtllm.reason


def test_trtllm_export_that_does_not_fit_in_ram_is_refused_before_calibration() -> None:
    plan = plan_memory(LLAMA_70B, gpus=[H100, H100], cpu_free=256 * GiB)  # calibration fits
    with pytest.raises(QuantizeError, match=r"the trtllm export needs ~2\d\d GiB of CPU RAM .* found 256 GiB free"):
        export_placement(plan, "trtllm", config=LLAMA_70B, cpu_free=256 * GiB)


def test_exports_follow_calibration_when_nothing_is_offloaded() -> None:
    for plan in (plan_memory(LLAMA_8B, gpus=[H100], cpu_free=64 * GiB),
                 plan_memory(LLAMA_70B, gpus=[H100] * 4, cpu_free=64 * GiB),
                 plan_memory(LLAMA_8B, gpus=[], cpu_free=64 * GiB)):
        for kind in ("unified", "trtllm"):
            p = export_placement(plan, kind, config=LLAMA_8B, cpu_free=64 * GiB)
            assert (p.device, p.device_map, p.max_memory) == (plan.device, plan.device_map, plan.max_memory)
    with pytest.raises(QuantizeError, match="unknown export 'onnx'"):
        export_placement(plan, "onnx", config=LLAMA_8B, cpu_free=64 * GiB)
