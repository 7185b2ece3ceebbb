"""TensorRT-LLM's `llmapi` Triton layout (release 1.2) for PyTorch-backend bundles.

One python model: config.pbtxt with the request interface below (read from
triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt), and `<version>/model.yaml` holding
the LLM API arguments (`model`, `backend: pytorch`, tensor/pipeline parallel sizes and the
bundle's options) plus `triton_config` (`max_batch_size`, `decoupled`), which upstream's
model.py reads from the version directory (pb_utils.get_model_dir()).

Deliberate difference: upstream leaves `max_batch_size` and `decoupled` out of config.pbtxt and
lets model.py's auto_complete_config set them from model.yaml. trtbuild serves with
`--disable-auto-complete-config`, so both are written into config.pbtxt too, with the same values
as model.yaml's triton_config (auto-complete setting an equal value is a no-op).
"""

from __future__ import annotations

from typing import Any

import yaml

from pipeline.bundle import Bundle
from pipeline.repository import layout_ifb as ifb
from pipeline.repository.rendered import (
    BUNDLE_DIR,
    Rendered,
    RenderedModel,
    RenderError,
    ServingOptions,
    _runtime_path,
    upstream_shim,
)

S = [1]
INPUTS: list[ifb.Tensor] = [
    ("text_input", "TYPE_STRING", [-1], ""),
    ("streaming", "TYPE_BOOL", S, "o"),
    ("sampling_param_best_of", "TYPE_INT32", S, "o"),
    ("sampling_param_temperature", "TYPE_FP32", S, "o"),
    ("sampling_param_top_k", "TYPE_INT32", S, "o"),
    ("sampling_param_top_p", "TYPE_FP32", S, "o"),
    ("sampling_param_frequency_penalty", "TYPE_FP32", S, "o"),
    ("sampling_param_presence_penalty", "TYPE_FP32", S, "o"),
    ("sampling_param_max_tokens", "TYPE_INT32", S, "o"),
    ("sampling_param_stop", "TYPE_STRING", [-1], "o"),
    ("sampling_param_seed", "TYPE_UINT64", S, "o"),
    ("sampling_param_exclude_input_from_output", "TYPE_BOOL", S, "o"),
    ("sampling_param_return_perf_metrics", "TYPE_BOOL", S, "o"),
    ("return_finish_reason", "TYPE_BOOL", S, "o"),
    ("return_stop_reason", "TYPE_BOOL", S, "o"),
    ("return_cumulative_logprob", "TYPE_BOOL", S, "o"),
    ("stop", "TYPE_BOOL", S, "o"),
]
OUTPUTS: list[ifb.Tensor] = [
    ("text_output", "TYPE_STRING", [-1], ""),
    ("finish_reason", "TYPE_STRING", [-1], ""),
    ("stop_reason", "TYPE_STRING", [-1], ""),
    ("cumulative_logprob", "TYPE_FP32", [-1], ""),
    ("kv_cache_reused_block", "TYPE_INT32", [-1], ""),
    ("kv_cache_missed_block", "TYPE_INT32", [-1], ""),
    ("kv_cache_alloc_new_blocks", "TYPE_INT32", [-1], ""),
    ("kv_cache_alloc_total_blocks", "TYPE_INT32", [-1], ""),
    ("kv_cache_hit_rate", "TYPE_FP32", [-1], ""),
    ("arrival_time_ns", "TYPE_INT64", S, ""),
    ("first_scheduled_time_ns", "TYPE_INT64", S, ""),
    ("first_token_time_ns", "TYPE_INT64", S, ""),
    ("last_token_time_ns", "TYPE_INT64", S, ""),
    ("acceptance_rate", "TYPE_FP32", S, ""),
    ("total_accepted_draft_tokens", "TYPE_INT32", S, ""),
    ("total_draft_tokens", "TYPE_INT32", S, ""),
]
# upstream model.py does not batch requests (its model.yaml: "does not support batching")
TRITON_MAX_BATCH_SIZE = 0


def llm_api_options(bundle: Bundle) -> dict[str, Any]:
    """The bundle's LLM API options file (written by the build stage), as a mapping."""
    rel = _runtime_path(bundle, "options")
    path = bundle.dir / rel
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RenderError(f"{path}: missing (manifest.json runtime.options names it); rebuild the bundle") from None
    except yaml.YAMLError as e:
        raise RenderError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise RenderError(f"{path}: LLM API options must be a mapping")
    return data


def model_yaml(bundle: Bundle, *, checkpoint: str, options: ServingOptions) -> dict[str, Any]:
    """model.yaml: `model` first (upstream's order), the bundle's LLM API options, triton_config."""
    llm = llm_api_options(bundle)
    if llm.get("backend", "pytorch") != "pytorch":
        raise RenderError(f"bundle {bundle.short_id}: LLM API options say backend '{llm.get('backend')}'; "
                          "the llmapi layout serves backend pytorch")
    llm.pop("model", None)  # the checkpoint path is the server's, set below
    out: dict[str, Any] = {"model": checkpoint, "backend": "pytorch",
                           "tensor_parallel_size": int(llm.pop("tensor_parallel_size", 1)),
                           "pipeline_parallel_size": int(llm.pop("pipeline_parallel_size", 1))}
    llm.pop("backend", None)
    out.update(llm)
    if options.kv_cache_free_gpu_mem_fraction is not None:  # the switch plan's share, not the build's
        out["kv_cache_config"] = {**(out.get("kv_cache_config") or {}),
                                  "free_gpu_memory_fraction": options.kv_cache_free_gpu_mem_fraction}
    out["triton_config"] = {"max_batch_size": TRITON_MAX_BATCH_SIZE, "decoupled": options.decoupled,
                            "cancellation_check_period_ms": options.cancellation_check_period_ms}
    return out


def render_llmapi(model: str, bundle: Bundle, version: int, *, version_dir: str,
                  options: ServingOptions) -> Rendered:
    checkpoint = f"{version_dir}/{BUNDLE_DIR}/{_runtime_path(bundle, 'checkpoint')}"
    data = model_yaml(bundle, checkpoint=checkpoint, options=options)
    config = {
        "name": model, "backend": "python", "max_batch_size": TRITON_MAX_BATCH_SIZE,
        "model_transaction_policy": {"decoupled": options.decoupled},
        "version_policy": {"specific": {"versions": [version]}},
        "input": ifb.tensors(INPUTS), "output": ifb.outputs(OUTPUTS),
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "parameters": {"bundle_id": {"string_value": bundle.id},
                       "recipe": {"string_value": str(bundle.manifest.get("name", ""))}},
    }
    files = {"model.py": upstream_shim("llmapi", options),
             "model.yaml": yaml.safe_dump(data, sort_keys=False, default_flow_style=False)}
    return Rendered(RenderedModel(model, "llmapi", config, files), [])
