"""What a rendered version is (RenderedModel, Rendered, ServingOptions), the constants and shims
every layout shares, and the manifest readers the layouts use. Kept apart from render.py so that
the layouts (layout_llmapi.py) and the dispatcher (render.py) both import it and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline import upstream
from pipeline.bundle import Bundle
from pipeline.errors import TrtbuildError

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


