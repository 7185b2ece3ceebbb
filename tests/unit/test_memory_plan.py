"""Memory plans for calibration, from config.json alone."""

from __future__ import annotations

import pytest

from pipeline.errors import QuantizeError
from pipeline.quant.memory import GiB, estimate_bytes, parameter_count, plan_memory

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
