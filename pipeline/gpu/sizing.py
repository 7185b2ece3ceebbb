"""How many bytes a model takes on GPUs: weights per rank, KV cache per token, from config.json.

Estimates, stated as such: they decide what may share a GPU and which parallelism a server needs,
before anything is loaded. They err on the large side (no weight sharing assumed beyond tied
embeddings, 1 GiB of runtime overhead per GPU per process).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.quant.memory import parameter_count

GiB = 1 << 30
KNOWN_MODELS = Path(__file__).with_name("known_models.json")
# CUDA context, cuBLAS workspaces and allocator slack of one process on one GPU
RUNTIME_OVERHEAD_GIB = 1.0
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
# bytes per weight of quantized linear layers, block scales included (ModelOpt exports):
# fp8 per-tensor scales; nvfp4 one fp8 scale per 16 values; int4 AWQ one fp16 scale per 128.
QUANT_BYTES = {"none": None, "fp8": 1.0, "nvfp4": 0.5 + 1 / 16, "int4_awq": 0.5 + 2 / 128,
               "w4a8_awq": 0.5 + 2 / 128}
KV_BYTES = {"none": None, "fp8": 1.0, "nvfp4": 0.5 + 1 / 16}


@dataclass(frozen=True)
class ModelSize:
    """Sizes of one checkpoint as served: weights in total and the KV cache per token."""

    name: str
    config_from: str  # where the config came from (path, hub cache, or the known-models table)
    parameters: int
    weight_bytes: int
    kv_bytes_per_token: int
    num_attention_heads: int
    num_key_value_heads: int

    def weights_per_gpu_gib(self, tp: int, pp: int = 1) -> float:
        return self.weight_bytes / (tp * pp) / GiB

    def kv_gib(self, tokens: int, tp: int = 1, pp: int = 1) -> float:
        # KV heads are split across TP ranks, replicated when there are fewer heads than ranks
        split = min(tp, self.num_key_value_heads) * pp
        return self.kv_bytes_per_token * tokens / split / GiB


def linear_parameters(config: dict[str, Any]) -> int:
    """Parameters of the quantizable linear layers (attention and MLP; not embeddings, norms, lm_head)."""
    c = config.get("text_config", config)
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or h // heads
    return int(layers * (2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * inter))


def model_size(config: dict[str, Any], *, name: str, config_from: str, dtype: str = "bfloat16",
               quant_algo: str = "none", kv_cache: str = "none") -> ModelSize:
    """Sizes of `config` served in `dtype`, its linear layers in `quant_algo`, its KV cache in `kv_cache`."""
    c = config.get("text_config", config)
    total = parameter_count(config)
    linear = linear_parameters(config)
    per = DTYPE_BYTES[dtype]
    q = QUANT_BYTES[quant_algo]
    weights = total * per if q is None else (total - linear) * per + linear * q
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    kv_per = KV_BYTES[kv_cache] or per
    kv_token = 2 * c["num_hidden_layers"] * kv_heads * head_dim * kv_per
    return ModelSize(name, config_from, total, int(weights), int(kv_token), heads, kv_heads)


def source_config(recipe: Any, recipe_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The source checkpoint's config.json as the run would see it, without downloading anything.

    A local path, the Hugging Face Hub cache (offline), or the known-models table for the shipped
    recipes; (None, why) when none has it.
    """
    src = recipe.source
    if src.path is not None:
        p = Path(src.path)
        p = p if p.is_absolute() else recipe_dir / p
        cfg = p / "config.json"
        if cfg.is_file():
            return json.loads(cfg.read_text()), str(cfg)
        return None, f"{cfg} not found"
    if src.repo is not None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(src.repo, "config.json", revision=src.revision)
        except Exception:  # a missing or odd cache is "not cached", not an error of the plan
            cached = None
        if isinstance(cached, str) and Path(cached).is_file():
            return json.loads(Path(cached).read_text()), f"hub cache ({src.repo}@{src.revision})"
        known = json.loads(KNOWN_MODELS.read_text())
        if src.repo in known:
            return dict(known[src.repo]), f"{KNOWN_MODELS.name} ({src.repo})"
        return None, (f"config.json of {src.repo} is neither in the Hugging Face cache nor in "
                      f"{KNOWN_MODELS.name}; run `trtbuild run RECIPE --until fetch` first")
    return None, "GGUF sources are sized after conversion (fetch stage)"


def recipe_size(recipe: Any, recipe_dir: Path, *, quantized: bool,
                checkpoint: Path | None = None) -> tuple[ModelSize | None, str]:
    """The recipe's source as served: quantized as the recipe says (the bundle), or the source as is.
    `checkpoint`: a fetched checkpoint directory whose config.json wins (at run time)."""
    if checkpoint is not None and (checkpoint / "config.json").is_file():
        cfg, where = json.loads((checkpoint / "config.json").read_text()), str(checkpoint / "config.json")
    else:
        cfg, where = source_config(recipe, recipe_dir)
    if cfg is None:
        return None, where
    q = recipe.quantize
    name = recipe.source.repo or recipe.name
    if quantized:
        return model_size(cfg, name=f"{name} ({q.algo}/{q.kv_cache})", config_from=where,
                          dtype=recipe.source.dtype, quant_algo=q.algo, kv_cache=q.kv_cache), where
    return model_size(cfg, name=f"{name} ({recipe.source.dtype})", config_from=where,
                      dtype=recipe.source.dtype), where
