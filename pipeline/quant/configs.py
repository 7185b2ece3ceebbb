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


# Weight block sizes along a linear layer's input features. ModelOpt pads a partial last block
# without a word, but TensorRT-LLM's groupwise INT4 (W4A16/W4A8 AWQ, group 128) and NVFP4 (16)
# GEMMs take whole blocks of K only, so a model whose dimensions are not multiples fails late.
BLOCK_SIZE = {"nvfp4": 16, "int4_awq": 128, "w4a8_awq": 128}


def check_block_shapes(config: dict[str, Any], algo: str) -> None:
    """Refuse, before anything is loaded, a model whose linear inputs are not whole blocks."""
    block = BLOCK_SIZE.get(algo)
    if block is None:
        return
    tc = config.get("text_config")
    c: dict[str, Any] = tc if isinstance(tc, dict) else config
    heads, hidden = c.get("num_attention_heads"), c.get("hidden_size")
    head_dim = c.get("head_dim") or (hidden // heads if isinstance(hidden, int) and heads else None)
    # the input widths of q/k/v/gate/up (hidden), down (intermediate) and o (heads * head_dim)
    dims = {"hidden_size": hidden, "intermediate_size": c.get("intermediate_size"),
            "num_attention_heads * head_dim": heads * head_dim if heads and head_dim else None}
    for name, value in dims.items():
        if isinstance(value, int) and value % block:
            raise QuantizeError(f"quantize.algo={algo} quantizes weights in blocks of {block} input features but "
                                f"this model's {name} = {value} is not a multiple of {block}; "
                                "set quantize.algo to fp8 for this model")
