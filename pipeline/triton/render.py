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
from dataclasses import dataclass, field
from typing import Any

from pipeline import upstream
from pipeline.bundle import Bundle
from pipeline.errors import TrtbuildError
from pipeline.triton import layout_ifb as ifb

VERSION_CONFIG = "trtbuild.config.pbtxt"  # the main model's config.pbtxt for this version
BUNDLE_DIR = "bundle"
# where TensorRT-LLM's Triton container keeps triton_backend/all_models (its Dockerfile copies
# them to /app/all_models)
UPSTREAM_MODELS_DIR = "/app/all_models"
UPSTREAM_MODEL_PY = {
    "preprocessing": "inflight_batcher_llm/preprocessing/1",
    "postprocessing": "inflight_batcher_llm/postprocessing/1",
    "llmapi": "llmapi/tensorrt_llm/1",
}
ENGINE_GPT_MODEL_TYPE = "inflight_fused_batching"
DEFAULT_KV_FRACTION = 0.9
EXECUTOR_WORKER_PATH = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"  # upstream literal

REFERENCE_SHIM = '''"""Written by trtbuild: the reference backend's Triton python model."""
from pipeline.backends.reference.triton_model import TritonPythonModel  # noqa: F401
'''

UPSTREAM_SHIM = '''"""Written by trtbuild: TensorRT-LLM's own {role} model, loaded from the serving container.

trtbuild does not copy upstream model code. This loads {rel}/model.py under
$TRTBUILD_TRITON_MODELS (default {default}) and re-exports its TritonPythonModel.
"""
import importlib.util
import os
import sys

_DIR = os.path.join(os.environ.get("TRTBUILD_TRITON_MODELS", {default!r}), {rel!r})
_PATH = os.path.join(_DIR, "model.py")
if not os.path.isfile(_PATH):
    raise ImportError(f"no TensorRT-LLM {role} model at {{_PATH}}: serve from the TensorRT-LLM "
                      "Triton container or set TRTBUILD_TRITON_MODELS to its all_models directory")
sys.path.insert(0, _DIR)  # upstream model.py imports modules next to it
_spec = importlib.util.spec_from_file_location("trtllm_upstream_{role}", _PATH)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
TritonPythonModel = _module.TritonPythonModel
'''


class RenderError(TrtbuildError):
    """A bundle cannot be rendered into a Triton repository."""


@dataclass(frozen=True)
class ServingOptions:
    """Serving settings that are not in the bundle (the runtime's, not the build's)."""

    # None: 0.9 for an engine, the bundle's own LLM API value for a pytorch bundle; publish sets it
    # from the switch plan (pipeline/gpu/schedule.py) so that two versions fit when they must
    kv_cache_free_gpu_mem_fraction: float | None = None
    enable_kv_cache_reuse: bool = True
    batch_scheduler_policy: str = "guaranteed_no_evict"  # or max_utilization
    decoupled: bool = True  # streaming responses
    exclude_input_in_output: bool = True
    enable_chunked_context: bool = True
    max_queue_delay_microseconds: int = 0
    cancellation_check_period_ms: int = 100
    stats_check_period_ms: int = 100
    pre_post_instances: int = 1  # python tokenizer instances each
    instances: int = 1  # reference backend model instances
    upstream_models_dir: str = UPSTREAM_MODELS_DIR
    # the bundle's serving profile (None: its default one) and explicit settings on top (a tune
    # point); pipeline/tune/profiles.py turns them into the fields above and model parameters
    profile: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class RenderedModel:
    """One Triton model: its config (ModelConfig JSON field names) and version directory files."""

    name: str
    role: str  # the upstream model directory it corresponds to
    config: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # path in the version dir -> text
    dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rendered:
    main: RenderedModel
    composing: list[RenderedModel]

    def all(self) -> list[RenderedModel]:
        return [*self.composing, self.main]


def composing_name(model: str, version: int, role: str) -> str:
    return f"{model}_v{version}_{role}"


def upstream_shim(role: str, options: ServingOptions) -> str:
    return UPSTREAM_SHIM.format(role=role, rel=UPSTREAM_MODEL_PY[role], default=options.upstream_models_dir)


def _params(values: dict[str, Any]) -> dict[str, Any]:
    return {k: {"string_value": _text(v)} for k, v in values.items()}


def _world_size(engine_cfg: dict[str, Any]) -> int:
    tp, pp = int(engine_cfg.get("tp_size") or 1), int(engine_cfg.get("pp_size") or 1)
    return int(engine_cfg.get("world_size") or tp * pp)


def _upstream_params(role: str, values: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of upstream's `role` template, in its order: ours where set, empty where
    unused (what upstream's own deployments do); then any of ours the template lacks."""
    keys = upstream.template_parameters(role)
    full = {k: values.get(k, "") for k in keys}
    full.update({k: v for k, v in values.items() if k not in full})
    return _params(full)


def _check_upstream(models: list[RenderedModel], bundle: Bundle) -> None:
    """Refuse a repository upstream's models would not load (tests/data/upstream records)."""
    problems = [p for m in models for p in upstream.check_triton_config(m.role, m.config)]
    if problems:
        raise RenderError(f"bundle {bundle.short_id}: rendered Triton configs upstream would reject: "
                          + "; ".join(problems))


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _runtime(bundle: Bundle) -> dict[str, Any]:
    runtime = bundle.manifest.get("runtime")
    if not isinstance(runtime, dict):
        raise RenderError(f"bundle {bundle.short_id}: manifest.json has no runtime section; rebuild the bundle")
    return runtime


def _runtime_path(bundle: Bundle, key: str) -> str:
    value = _runtime(bundle).get(key)
    if not isinstance(value, str) or not value:
        raise RenderError(f"bundle {bundle.short_id}: manifest.json runtime.{key} is missing; rebuild the bundle")
    return value


# --------------------------------------------------------------------------- reference
def render_reference(model: str, bundle: Bundle, version: int, *, version_dir: str,
                     options: ServingOptions) -> Rendered:
    from pipeline.triton.repository import reference_config

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
            # orchestrator mode (pipeline/triton/parallel.py) spawns one worker per listed GPU and
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


def render_llmapi_entry(model: str, bundle: Bundle, version: int, *, version_dir: str,
                        options: ServingOptions) -> Rendered:
    from pipeline.triton.layout_llmapi import render_llmapi

    return render_llmapi(model, bundle, version, version_dir=version_dir, options=options)


Renderer = Callable[..., Rendered]
RENDERERS: dict[str, Renderer] = {
    "reference": render_reference,
    "tensorrt": render_inflight_batcher,
    "pytorch": render_llmapi_entry,
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
