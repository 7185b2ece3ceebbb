"""pytorch backend: a (quantized) unified HF checkpoint plus TensorRT-LLM LLM API options.

This is the current TensorRT-LLM path: nothing is compiled ahead of time; `trtllm-serve
--extra_llm_api_options` or Triton's llmapi python model loads the checkpoint with these options.
Option names are TensorRT-LLM 1.2's TorchLlmArgs / KvCacheConfig / CudaGraphConfig fields (all of
which forbid unknown keys); see tests/data/upstream/llm_api.json for where they were read.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import StageError
from pipeline.recipe.schema import Recipe
from pipeline.util.atomic import write_text

STAGE = "build"
WARMUP = "pipeline.backends.pytorch:warmup_load"  # run_function target: the build stage runs it under the executor
WARMUP_PROMPT = "The capital of France is"
WARMUP_TOKENS = 4


def cuda_graph_batch_sizes(recipe: Recipe) -> list[int]:
    """The recipe's CUDA graph batch sizes that can occur: never above max_batch_size.

    A graph for a batch larger than the scheduler ever forms only costs memory (up to ~200 MB each).
    """
    top = recipe.build.max_batch_size
    sizes = sorted({s for s in recipe.build.pytorch.cuda_graph_batch_sizes if s <= top})
    return sizes or [top]


def llm_api_options(recipe: Recipe) -> dict[str, Any]:
    """LLM API options (TensorRT-LLM 1.2, PyTorch backend) for this recipe, as plain YAML-able data."""
    b, p = recipe.build, recipe.build.pytorch
    return {
        "backend": "pytorch",
        "tensor_parallel_size": recipe.target.tensor_parallel,
        "pipeline_parallel_size": recipe.target.pipeline_parallel,
        "max_batch_size": b.max_batch_size,
        "max_num_tokens": b.max_num_tokens,
        "max_seq_len": b.max_seq_len,
        "max_input_len": b.max_input_len or b.max_seq_len,
        "enable_chunked_prefill": p.enable_chunked_prefill,
        "trust_remote_code": False,
        "kv_cache_config": {
            "free_gpu_memory_fraction": p.kv_cache_free_gpu_memory_fraction,
            # 'fp8' also sets quant_config.kv_cache_quant_algo; 'auto' follows the checkpoint
            "dtype": "fp8" if recipe.quantize.kv_cache == "fp8" else "auto",
            "enable_block_reuse": p.enable_block_reuse,
        },
        "cuda_graph_config": {"batch_sizes": cuda_graph_batch_sizes(recipe)},
    }


def write_options(path: Path, options: dict[str, Any]) -> None:
    """Write the options YAML atomically (what trtllm-serve --extra_llm_api_options reads)."""
    write_text(Path(path), yaml.safe_dump(options, sort_keys=False, default_flow_style=False))


def warmup_load(bundle_dir: str | Path, options_path: str | Path) -> dict[str, Any] | None:
    """Load the bundle with tensorrt_llm.LLM and generate a few tokens; None without tensorrt_llm.

    None means "not verified on a runtime" (the manifest says so); it is not a pass. Runs in the
    recipe's pytorch executor (the TensorRT-LLM environment), so arguments and result are JSON-able.
    """
    if importlib.util.find_spec("tensorrt_llm") is None:
        return None
    try:
        trtllm = importlib.import_module("tensorrt_llm")
    except Exception as e:  # an installed but broken TensorRT-LLM must not read as "not installed"
        raise StageError(STAGE, f"tensorrt_llm is installed but does not import: {e}") from e
    options = yaml.safe_load(Path(options_path).read_text(encoding="utf-8")) or {}
    if not isinstance(options, dict):
        raise StageError(STAGE, f"{options_path}: LLM API options must be a mapping")
    start = time.monotonic()
    try:
        llm = trtllm.LLM(model=str(bundle_dir), **options)
    except Exception as e:
        raise StageError(STAGE, f"tensorrt_llm.LLM could not load {bundle_dir} with {options_path}: {e}") from e
    try:
        loaded_s = time.monotonic() - start
        params = trtllm.SamplingParams(max_tokens=WARMUP_TOKENS)  # greedy by default
        out = llm.generate([WARMUP_PROMPT], params)[0].outputs[0]
        token_ids = list(out.token_ids)
    finally:
        llm.shutdown()
    if not token_ids:
        raise StageError(STAGE, f"{bundle_dir}: warm-up generation returned no tokens")
    return {
        "tensorrt_llm": str(getattr(trtllm, "__version__", "unknown")),  # the compatibility key's name
        "prompt": WARMUP_PROMPT,
        "tokens": len(token_ids),
        "token_ids": token_ids,
        "text": out.text,
        "load_seconds": round(loaded_s, 3),
        "total_seconds": round(time.monotonic() - start, 3),
    }
