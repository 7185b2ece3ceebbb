"""RoPE settings in the forms other runtimes read, written into every export.

transformers 5 saves RoPE only under `rope_parameters` ({"rope_type", "rope_theta", ...}).
Readers pinned to transformers 4.x (TensorRT-LLM 1.2 pins transformers 4.57.3; vLLM builds
pinned to 4.57.x) read the top-level `rope_theta` (default 10000.0) and `rope_scaling` instead:
without them a Llama 3.1 export silently runs with theta 10000 and no llama3 scaling. ModelOpt
0.47's TensorRT-LLM export does not look under `rope_parameters` either (no `rotary_base`).

transformers 4.57.3's reading rules, from the PyPI wheel transformers-4.57.3-py3-none-any.whl
(sha256 c77d353a4851b1880191603d36acb313411d3577f6e2897814f333841f7003f4; the git commit of the
v4.57.3 tag could not be located through this project's source index):
- models/llama/configuration_llama.py:179-180 `rope_theta=10000.0, rope_scaling=None`;
  :211-214 a `type` key is copied to `rope_type`, then `rope_config_validation(self)`.
- models/qwen2/configuration_qwen2.py:165-166 the same defaults; :197-200 the same validation.
- models/mistral/configuration_mistral.py:134 `rope_theta=10000.0`, :157 `self.rope_theta`; no
  `rope_scaling` parameter (an extra key stays an attribute, read by the rotary embedding).
- modeling_rope_utils.py:531-557 `_check_received_keys`: a missing required key raises KeyError,
  an unknown one (e.g. `rope_theta` inside `rope_scaling`) only warns; :713 llama3 requires
  {"rope_type", "factor", "original_max_position_embeddings", "low_freq_factor",
  "high_freq_factor"}; :747-754 the known types: default, linear, dynamic, yarn, longrope, llama3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.util import atomic

# rope_type -> keys transformers 4.57.3 requires in rope_scaling (modeling_rope_utils.py, the
# `required_keys` of each _validate_* function: :563, :571, :583, :597, :663, :713)
TF4_REQUIRED = {
    "default": {"rope_type"},
    "linear": {"rope_type", "factor"},
    "dynamic": {"rope_type", "factor"},
    "yarn": {"rope_type", "factor"},
    "longrope": {"rope_type", "short_factor", "long_factor"},
    "llama3": {"rope_type", "factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
}
TF4_DEFAULT_THETA = 10000.0


def rope_settings(hf_config: dict[str, Any]) -> tuple[float | None, str, dict[str, Any]]:
    """(theta, rope_type, scaling parameters) from a transformers 4 or 5 config.json."""
    tc = hf_config.get("text_config")
    c: dict[str, Any] = tc if isinstance(tc, dict) else hf_config
    merged: dict[str, Any] = {}
    for key in ("rope_scaling", "rope_parameters"):  # transformers 5's rope_parameters wins
        if isinstance(c.get(key), dict):
            merged.update(c[key])
    theta = c.get("rope_theta", merged.get("rope_theta"))
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    scaling = {k: v for k, v in merged.items() if k not in ("rope_theta", "rope_type", "type")}
    return (float(theta) if theta is not None else None), str(rope_type), scaling


def tf4_rope_fields(hf_config: dict[str, Any]) -> dict[str, Any]:
    """Top-level `rope_theta` and (for a non-default type) `rope_scaling` as transformers 4.57 reads them."""
    theta, rope_type, scaling = rope_settings(hf_config)
    out: dict[str, Any] = {}
    if theta is not None:
        out["rope_theta"] = theta
    if rope_type != "default":
        out["rope_scaling"] = {"rope_type": rope_type, **scaling}
    return out


def fix_unified_config(unified_dir: Path, hf_config: dict[str, Any]) -> list[str]:
    """Add transformers-4 RoPE fields to a unified HF export's config.json; returns what was added.

    `rope_parameters` stays: transformers 5 readers use it. Fields already present are kept.
    """
    path = unified_dir / "config.json"
    cfg = json.loads(path.read_text())
    target = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    fixes = []
    for key, value in tf4_rope_fields(hf_config).items():
        if target.get(key) is None:
            target[key] = value
            fixes.append(f"{key}={value['rope_type'] if isinstance(value, dict) else value}")
    if fixes:
        atomic.write_text(path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return fixes


def fix_trtllm_config(trtllm_dir: Path, hf_config: dict[str, Any]) -> list[str]:
    """Put back the RoPE settings ModelOpt 0.47's TensorRT-LLM export drops from transformers 5 configs.

    Without `rotary_base` TensorRT-LLM silently uses 10000 (SmolLM2 needs 100000, Llama 3.1 500000).
    """
    path = trtllm_dir / "config.json"
    cfg = json.loads(path.read_text())
    theta, rope_type, scaling = rope_settings(hf_config)
    fixes = []
    if theta is not None and "rotary_base" not in cfg:
        cfg["rotary_base"] = theta
        fixes.append(f"rotary_base={theta}")
    if rope_type != "default" and "rotary_scaling" not in cfg:
        cfg["rotary_scaling"] = {**scaling, "type": rope_type}
        fixes.append(f"rotary_scaling.type={rope_type}")
    if fixes:
        atomic.write_text(path, json.dumps(cfg, indent=4))
    return fixes
