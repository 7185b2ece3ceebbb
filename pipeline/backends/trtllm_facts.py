"""What trtbuild relies on from TensorRT-LLM 1.2, in one place, with where each fact was read.

TensorRT-LLM cannot be installed on the development machines (its wheel comes from NVIDIA's own
index), so these facts were read from its source (NVIDIA/TensorRT-LLM) and are re-checked against a
real install by tests/gpu/test_trtllm_real.py. The full flag and key lists are test data:
tests/data/upstream/trtllm_build.json and tests/data/upstream/llm_api.json.
"""

from __future__ import annotations

# The engine path (trtllm-build, rank{N}.engine) exists up to the 1.2 line only.
TRTLLM_LINE = "1.2"

# recipe quantize.algo / quantize.kv_cache -> QuantAlgo names in a TRT-LLM checkpoint or engine
# config.json (pretrained_config.quantization.quant_algo / kv_cache_quant_algo; null for none).
QUANT_ALGO: dict[str, str | None] = {
    "none": None, "fp8": "FP8", "nvfp4": "NVFP4", "int4_awq": "W4A16_AWQ", "w4a8_awq": "W4A8_AWQ",
}
KV_CACHE_QUANT_ALGO: dict[str, str | None] = {"none": None, "fp8": "FP8", "nvfp4": "NVFP4"}

# tensorrt_llm/builder.py build(): FP8 context FMHA survives only for these weight algorithms, and
# with paged context FMHA only together with an FP8 KV cache (otherwise it is switched off, with a
# warning, whatever the flag said).
FP8_CONTEXT_FMHA_ALGOS = frozenset({"fp8", "nvfp4", "w4a8_awq"})

# tensorrt_llm/plugin/plugin.py add_plugin_argument(): boolean plugin options are `type=str,
# choices=["enable", "disable"]`, not store_true flags.
ENABLE, DISABLE = "enable", "disable"

# tensorrt_llm/commands/build.py --kv_cache_type (KVCacheType.from_string).
KV_CACHE_TYPES = ("continuous", "paged", "disabled")

# Engine.save(): config.json is written by rank 0, and one rank{N}.engine per rank.
ENGINE_CONFIG = "config.json"


def engine_file(rank: int) -> str:
    return f"rank{rank}.engine"


def checkpoint_file(rank: int) -> str:
    """A TensorRT-LLM checkpoint holds config.json and one rank{N}.safetensors per rank."""
    return f"rank{rank}.safetensors"
