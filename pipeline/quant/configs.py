"""Recipe names -> NVIDIA ModelOpt quantization configs (ModelOpt 0.47 API)."""

from __future__ import annotations

from typing import Any

from pipeline.errors import QuantizeError

# names hf_quant_config.json uses for each recipe value
QUANT_ALGO = {"none": None, "fp8": "FP8", "nvfp4": "NVFP4", "int4_awq": "W4A16_AWQ", "w4a8_awq": "W4A8_AWQ"}
KV_ALGO = {"none": None, "fp8": "FP8", "nvfp4": "NVFP4"}


def modelopt_config(algo: str, kv_cache: str) -> dict[str, Any] | None:
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.utils import update_quant_cfg_with_kv_cache_quant

    weights = {
        "none": None, "fp8": mtq.FP8_DEFAULT_CFG, "nvfp4": mtq.NVFP4_DEFAULT_CFG,
        "int4_awq": mtq.INT4_AWQ_CFG, "w4a8_awq": mtq.W4A8_AWQ_BETA_CFG,
    }
    kv = {"none": None, "fp8": mtq.FP8_KV_CFG, "nvfp4": mtq.NVFP4_KV_CFG}
    if algo not in weights or kv_cache not in kv:
        raise QuantizeError(f"unknown quantization {algo}/{kv_cache}")
    base, kv_cfg = weights[algo], kv[kv_cache]
    if base is None and kv_cfg is None:
        return None
    cfg: dict[str, Any] = dict(base) if base is not None else {"quant_cfg": None, "algorithm": "max"}
    if kv_cfg is not None:
        cfg = update_quant_cfg_with_kv_cache_quant(cfg, kv_cfg["quant_cfg"])
    return cfg
