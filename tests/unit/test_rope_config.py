"""RoPE settings written for runtimes that read configs the transformers 4.57 way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.quant.rope import TF4_DEFAULT_THETA, TF4_REQUIRED, fix_trtllm_config, fix_unified_config

# config.json as transformers 5 writes them (RoPE only under rope_parameters)
LLAMA31 = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "rope_parameters": {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}}
QWEN25 = {"model_type": "qwen2", "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}
MISTRAL03 = {"model_type": "mistral", "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}
# a transformers 4 config.json (Llama 3.1's own): nothing to add
LLAMA31_TF4 = {"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}}


def tf4_read(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """What transformers 4.57.3 makes of a config.json's RoPE (stand-in; rules cited in pipeline/quant/rope.py).

    rope_theta defaults to 10000.0 (configuration_llama.py:179); rope_scaling is validated by
    rope_type, and a missing required key raises KeyError (modeling_rope_utils.py:548-550).
    """
    theta = float(cfg.get("rope_theta", TF4_DEFAULT_THETA))
    scaling = cfg.get("rope_scaling")
    if scaling is not None:
        scaling = dict(scaling)
        if "type" in scaling:
            scaling["rope_type"] = scaling["type"]
        missing = TF4_REQUIRED[scaling.get("rope_type", "default")] - set(scaling)
        if missing:
            raise KeyError(f"Missing required keys in `rope_scaling`: {missing}")
    return theta, scaling


def unified(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    d = tmp_path / "unified"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "modelopt"}}))
    return d


def test_transformers5_config_reads_as_theta_10000_without_the_fix() -> None:
    assert tf4_read(LLAMA31) == (10000.0, None)  # the defect: Llama 3.1 served with the wrong RoPE


def test_llama31_unified_gets_top_level_theta_and_llama3_scaling(tmp_path: Path) -> None:
    d = unified(tmp_path, LLAMA31)
    assert fix_unified_config(d, LLAMA31) == ["rope_theta=500000.0", "rope_scaling=llama3"]
    cfg = json.loads((d / "config.json").read_text())
    theta, scaling = tf4_read(cfg)
    assert theta == 500000.0
    assert scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}
    assert cfg["rope_parameters"] == LLAMA31["rope_parameters"], "transformers 5 readers keep theirs"
    assert cfg["quantization_config"] == {"quant_method": "modelopt"}


@pytest.mark.parametrize("cfg", [QWEN25, MISTRAL03], ids=["qwen2.5", "mistral-v0.3"])
def test_default_rope_gets_theta_only(tmp_path: Path, cfg: dict[str, Any]) -> None:
    d = unified(tmp_path, cfg)
    assert fix_unified_config(d, cfg) == ["rope_theta=1000000.0"]
    out = json.loads((d / "config.json").read_text())
    assert tf4_read(out) == (1000000.0, None) and "rope_scaling" not in out


def test_transformers4_config_is_left_alone(tmp_path: Path) -> None:
    d = unified(tmp_path, LLAMA31_TF4)
    before = (d / "config.json").read_text()
    assert fix_unified_config(d, LLAMA31_TF4) == []
    assert (d / "config.json").read_text() == before


def test_trtllm_rotary_fields_from_either_form(tmp_path: Path) -> None:
    for cfg in (LLAMA31, LLAMA31_TF4):
        d = tmp_path / cfg["model_type"] / str(id(cfg))
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"architecture": "LlamaForCausalLM"}))
        assert fix_trtllm_config(d, cfg) == ["rotary_base=500000.0", "rotary_scaling.type=llama3"]
        out = json.loads((d / "config.json").read_text())
        assert out["rotary_base"] == 500000.0 and out["rotary_scaling"]["type"] == "llama3"
        assert out["rotary_scaling"]["factor"] == 8.0 and "rope_theta" not in out["rotary_scaling"]


TF4_PATH = os.environ.get("TRTBUILD_TRANSFORMERS4_PATH")


@pytest.mark.skipif(not TF4_PATH, reason="set TRTBUILD_TRANSFORMERS4_PATH to a `pip install --target` dir holding "
                                         "transformers==4.57.3, huggingface_hub<1 and tokenizers<0.23")
def test_real_transformers_457_reads_the_fixed_config(tmp_path: Path) -> None:
    """The stand-in above, checked against the real thing (run that way when this file was written)."""
    d = unified(tmp_path, {**LLAMA31, "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
                           "intermediate_size": 128, "vocab_size": 32})
    code = ("import json, sys, transformers; from transformers import AutoConfig; "
            "c = AutoConfig.from_pretrained(sys.argv[1]); "
            "print(json.dumps([transformers.__version__, c.rope_theta, c.rope_scaling]))")
    read = [sys.executable, "-c", code, str(d)]
    env = {**os.environ, "PYTHONPATH": str(TF4_PATH)}
    before = json.loads(subprocess.run(read, capture_output=True, text=True, env=env, check=True).stdout)
    assert before == ["4.57.3", 10000.0, None]
    fix_unified_config(d, LLAMA31)
    after = json.loads(subprocess.run(read, capture_output=True, text=True, env=env, check=True).stdout)
    assert after[1] == 500000.0 and after[2]["rope_type"] == "llama3" and after[2]["factor"] == 8.0
