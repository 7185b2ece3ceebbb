"""What one published version of a model is in a Triton repository, rendered from the bundle manifest.

A renderer turns (model name, bundle, version) into Triton models: `main`, the model clients
call, whose version directory also holds the bundle, and `composing` models it routes through.
Renderers are picked by the manifest's backend from RENDERERS:

- reference: one python model (pipeline.backends.reference) with the ensemble's LLM interface.
- tensorrt: TensorRT-LLM's inflight_batcher_llm layout: `preprocessing` (python, tokenize) ->
  `tensorrt_llm` (`backend: "tensorrtllm"`, the engine) -> `postprocessing` (python, detokenize),
  wrapped by an `ensemble` that is `main`.
- pytorch: TensorRT-LLM's llmapi layout: one python model with `<version>/model.yaml`.

Versioning. Triton's config.pbtxt is per model, not per version, yet `gpt_model_path`,
`tokenizer_dir` and an ensemble's steps must name one version's files. So every version renders
its own composing models, named `<model>_v<N>_<role>` with the single version N, and an ensemble
config whose steps pin exactly those (`model_version: N`). A version is therefore immutable and
self-consistent; switching to N installs N's ensemble config (kept in `<model>/<N>/` as
VERSION_CONFIG) and reloads the ensemble: Triton loads N's composing models while the old
ensemble keeps serving through its own, then the old composing models are unloaded.

Upstream python models (preprocessing, postprocessing, llmapi) are not copied: each version
directory gets a small model.py that loads TensorRT-LLM's own copy from the serving container
(UPSTREAM_MODELS_DIR, /app/all_models in nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3;
$TRTBUILD_TRITON_MODELS overrides it on the server).
"""


from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.bundle import Bundle
from pipeline.repository import layout_ifb as ifb
from pipeline.repository.layout_llmapi import render_llmapi
from pipeline.repository.rendered import (  # noqa: F401 - re-exported: the names callers know
    BUNDLE_DIR,
    DEFAULT_KV_FRACTION,
    ENGINE_GPT_MODEL_TYPE,
    EXECUTOR_WORKER_PATH,
    REFERENCE_SHIM,
    UPSTREAM_MODEL_PY,
    UPSTREAM_MODELS_DIR,
    UPSTREAM_SHIM,
    VERSION_CONFIG,
    Rendered,
    RenderedModel,
    RenderError,
    ServingOptions,
    _check_upstream,
    _params,
    _runtime,
    _runtime_path,
    _upstream_params,
    _world_size,
    composing_name,
    upstream_shim,
)

# inputs and outputs with the names of TensorRT-LLM's inflight_batcher_llm ensemble
ENSEMBLE_INPUTS: list[tuple[str, str, list[int], bool]] = [
    ("text_input", "TYPE_STRING", [1], False),
    ("max_tokens", "TYPE_INT32", [1], True),
    ("temperature", "TYPE_FP32", [1], True),
    ("top_k", "TYPE_INT32", [1], True),
    ("top_p", "TYPE_FP32", [1], True),
    ("random_seed", "TYPE_UINT64", [1], True),
    ("end_id", "TYPE_INT32", [1], True),
    ("stop_words", "TYPE_STRING", [-1], True),
    ("stream", "TYPE_BOOL", [1], True),
    ("return_log_probs", "TYPE_BOOL", [1], True),
    ("ignore_eos", "TYPE_BOOL", [1], True),
]
REFERENCE_OUTPUTS: list[tuple[str, str, list[int]]] = [
    ("text_output", "TYPE_STRING", [-1]),
    ("output_token_count", "TYPE_INT32", [1]),
    ("output_log_probs", "TYPE_FP32", [-1]),
]


def reference_config(name: str, bundle: Bundle, *, versions: list[int], instances: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,  # the runtime batches concurrent requests itself
        "model_transaction_policy": {"decoupled": True},
        "input": [{"name": n, "data_type": t, "dims": d, "optional": o} for n, t, d, o in ENSEMBLE_INPUTS],
        "output": [{"name": n, "data_type": t, "dims": d} for n, t, d in REFERENCE_OUTPUTS],
        "instance_group": [{"count": instances, "kind": "KIND_CPU"}],
        "version_policy": {"specific": {"versions": versions}},
        "parameters": {"bundle_dir": {"string_value": "bundle"}, "bundle_id": {"string_value": bundle.id},
                       "recipe": {"string_value": str(bundle.manifest.get("name", ""))}},
    }


# --------------------------------------------------------------------------- reference
def render_reference(model: str, bundle: Bundle, version: int, *, version_dir: str,
                     options: ServingOptions) -> Rendered:
    cfg = reference_config(model, bundle, versions=[version], instances=options.instances)
    return Rendered(RenderedModel(model, "reference", cfg, {"model.py": REFERENCE_SHIM}), [])


# --------------------------------------------------------------------------- tensorrt (inflight batcher)
def render_inflight_batcher(model: str, bundle: Bundle, version: int, *, version_dir: str,
                            options: ServingOptions) -> Rendered:
    """The inflight_batcher_llm ensemble for an engine bundle; `version_dir` as the server sees it."""
    engine_cfg = _runtime(bundle).get("engine_config")
    if not isinstance(engine_cfg, dict) or not engine_cfg.get("max_batch_size"):
        raise RenderError(f"bundle {bundle.short_id}: manifest.json runtime.engine_config.max_batch_size is "
                          "missing; the engine's build_config is needed to size Triton's batches")
    engine = f"{version_dir}/{BUNDLE_DIR}/{_runtime_path(bundle, 'engine')}"
    tokenizer = f"{version_dir}/{BUNDLE_DIR}/{_runtime_path(bundle, 'tokenizer')}"
    mbs = int(engine_cfg["max_batch_size"])
    o = options
    batching = {"preferred_batch_size": [mbs], "max_queue_delay_microseconds": o.max_queue_delay_microseconds}
    policy = {"specific": {"versions": [version]}}
    names = {role: composing_name(model, version, role) for role in ("preprocessing", "tensorrt_llm",
                                                                      "postprocessing")}
    pre = RenderedModel(names["preprocessing"], "preprocessing", {
        "name": names["preprocessing"], "backend": "python", "max_batch_size": mbs,
        "dynamic_batching": batching, "version_policy": policy,
        "input": ifb.tensors(ifb.PREPROCESSING_INPUTS), "output": ifb.outputs(ifb.PREPROCESSING_OUTPUTS),
        "parameters": _upstream_params("preprocessing", {"tokenizer_dir": tokenizer, "add_special_tokens": True,
                                                         "gpt_model_path": engine}),
        "instance_group": [{"count": o.pre_post_instances, "kind": "KIND_CPU"}],
    }, {"model.py": upstream_shim("preprocessing", o)})
    core = RenderedModel(names["tensorrt_llm"], "tensorrt_llm", {
        "name": names["tensorrt_llm"], "backend": "tensorrtllm", "max_batch_size": mbs,
        "model_transaction_policy": {"decoupled": o.decoupled}, "dynamic_batching": batching,
        "version_policy": policy,
        "input": ifb.tensors(ifb.CORE_INPUTS), "output": ifb.outputs(ifb.CORE_OUTPUTS),
        # one instance drives every GPU of the engine (the executor spawns the ranks)
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "parameters": _upstream_params("tensorrt_llm", {
            "max_beam_width": int(engine_cfg.get("max_beam_width") or 1),
            "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
            "gpt_model_type": ENGINE_GPT_MODEL_TYPE,
            "gpt_model_path": engine,
            "batch_scheduler_policy": o.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": o.kv_cache_free_gpu_mem_fraction or DEFAULT_KV_FRACTION,
            "exclude_input_in_output": o.exclude_input_in_output,
            "cancellation_check_period_ms": o.cancellation_check_period_ms,
            "stats_check_period_ms": o.stats_check_period_ms,
            "enable_kv_cache_reuse": o.enable_kv_cache_reuse,
            "normalize_log_probs": True,
            "enable_chunked_context": o.enable_chunked_context,
            "executor_worker_path": EXECUTOR_WORKER_PATH,
            # orchestrator mode (pipeline/repository/parallel.py) spawns one worker per listed GPU and
            # only one when none is listed, so a TP/PP > 1 engine must list all of its GPUs
            "gpu_device_ids": ",".join(str(i) for i in range(_world_size(engine_cfg))),
        }),
    })
    post = RenderedModel(names["postprocessing"], "postprocessing", {
        "name": names["postprocessing"], "backend": "python", "max_batch_size": mbs,
        "dynamic_batching": {}, "version_policy": policy,
        "input": ifb.tensors(ifb.POSTPROCESSING_INPUTS), "output": ifb.outputs(ifb.POSTPROCESSING_OUTPUTS),
        "parameters": _upstream_params("postprocessing", {"tokenizer_dir": tokenizer, "skip_special_tokens": True}),
        "instance_group": [{"count": o.pre_post_instances, "kind": "KIND_CPU"}],
    }, {"model.py": upstream_shim("postprocessing", o)})
    steps = [{"model_name": names[role], "model_version": version, "input_map": dict(inp), "output_map": dict(out)}
             for role, inp, out in ifb.STEPS]
    ensemble = RenderedModel(model, "ensemble", {
        "name": model, "platform": "ensemble", "max_batch_size": mbs, "version_policy": policy,
        "input": ifb.tensors(ifb.ENSEMBLE_INPUTS), "output": ifb.outputs(ifb.ENSEMBLE_OUTPUTS),
        "ensemble_scheduling": {"step": steps},
        "parameters": _params({"bundle_id": bundle.id, "recipe": bundle.manifest.get("name", "")}),
    })
    _check_upstream([pre, core, post], bundle)
    return Rendered(ensemble, [pre, core, post])


Renderer = Callable[..., Rendered]
RENDERERS: dict[str, Renderer] = {
    "reference": render_reference,
    "tensorrt": render_inflight_batcher,
    "pytorch": render_llmapi,
}
# the Triton backend each bundle backend needs on the server besides python
SERVER_BACKENDS: dict[str, str | None] = {"reference": None, "tensorrt": "tensorrtllm", "pytorch": None}


def render_version(model: str, bundle: Bundle, version: int, *, version_dir: str,
                   options: ServingOptions | None = None) -> Rendered:
    """Every Triton model of `version` of `model`; `version_dir` is `<repo>/<model>/<version>` as the
    server sees it (paths in configs and model.yaml are absolute)."""
    renderer = RENDERERS.get(bundle.backend)
    if renderer is None:
        raise RenderError(f"bundle {bundle.short_id}: backend '{bundle.backend}' has no Triton layout; "
                          f"known: {', '.join(sorted(RENDERERS))}")
    from pipeline.tune.profiles import serving_options

    options, params = serving_options(bundle, options or ServingOptions())
    rendered = renderer(model, bundle, version, version_dir=version_dir, options=options)
    rendered.main.config.setdefault("parameters", {}).update(params)
    return rendered
