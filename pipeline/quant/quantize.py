"""Quantize a checkpoint with NVIDIA ModelOpt and export what the backend needs.

Calibrate once, save the calibrated state, and restore it into a freshly loaded model before each
export: each ModelOpt export mutates the model it is given (a second export from the same
model silently writes different tensors). The state file holds only what calibration added or
changed (pipeline/quant/state.py): 0.45 MB instead of `mto.save`'s 538 MB for SmolLM2-135M FP8+FP8 KV.
"""

from __future__ import annotations

import importlib.metadata
import json
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import QuantizeError
from pipeline.quant.calibration import Calibration
from pipeline.quant.configs import KV_ALGO, QUANT_ALGO, check_block_shapes, modelopt_config
from pipeline.quant.memory import available, export_placement, plan_memory
from pipeline.quant.rope import fix_trtllm_config, fix_unified_config
from pipeline.quant.state import STATE_FILE, restore_state, save_state, state_digests
from pipeline.util import atomic

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json")


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("nvidia-modelopt", "torch", "transformers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _load(src: Path, dtype: Any, device: str, plan_device_map: str | None, max_memory: dict[Any, int]) -> Any:
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"dtype": dtype}
    if plan_device_map:
        kw.update(device_map=plan_device_map, max_memory=max_memory)
    model = AutoModelForCausalLM.from_pretrained(src, **kw).eval()
    if not plan_device_map and device != "cpu":
        model = model.to(device)
    return model


def amax_summary(model: Any) -> dict[str, dict[str, float]]:
    """Per quantizer kind (weight, input, k/v bmm): how many were calibrated and their amax range."""
    import torch

    groups: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        amax = getattr(module, "amax", None)
        if not isinstance(amax, torch.Tensor) or not name.endswith("_quantizer"):
            continue
        kind = name.rsplit(".", 1)[-1]
        groups.setdefault(kind, []).extend(amax.detach().float().reshape(-1).cpu().tolist())
    return {k: {"count": len(v), "min": min(v), "max": max(v), "mean": sum(v) / len(v)}
            for k, v in sorted(groups.items()) if v}


def quantize_checkpoint(src_dir: Path, out_dir: Path, *, algo: str, kv_cache: str, calibration: Calibration | None,
                        exports: set[str], tensor_parallel: int = 1, pipeline_parallel: int = 1,
                        device: str | None = None, dtype: str = "bfloat16",
                        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    import modelopt.torch.quantization as mtq
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # ModelOpt's exports make transformers warn about every scale tensor

    start = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((src_dir / "config.json").read_text())
    check_block_shapes(config, algo)  # before minutes of loading and calibrating
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpus, cpu_free = available()
    plan = plan_memory(config, gpus=gpus if device == "cuda" else [], cpu_free=cpu_free,
                       dtype="float32" if device == "cpu" else dtype)
    # calibrate in fp32 on CPU (bf16 matmuls are slow there); export in the checkpoint's dtype
    calib_dtype = torch.float32 if plan.device == "cpu" else getattr(torch, dtype)
    export_dtype = getattr(torch, dtype)
    # where each export runs, decided (and refused when it cannot fit) before any loading
    placements = {kind: export_placement(plan, kind, config=config, cpu_free=cpu_free, dtype=dtype, algo=algo)
                  for kind in sorted(exports)}
    qcfg = modelopt_config(algo, kv_cache)
    record: dict[str, Any] = {
        "algo": algo, "kv_cache": kv_cache, "quant_algo": QUANT_ALGO[algo], "kv_cache_quant_algo": KV_ALGO[kv_cache],
        "exports": sorted(exports), "device": plan.device, "memory_plan": plan.describe(),
        "export_placement": {k: p.record() for k, p in placements.items()},
        "tensor_parallel": tensor_parallel, "pipeline_parallel": pipeline_parallel, "versions": _versions(),
        "calibration": calibration.record() if calibration else None,
        "quant_config": json.loads(json.dumps(qcfg, default=str)) if qcfg else None,
    }
    state = out_dir / STATE_FILE
    if qcfg is not None:
        if calibration is None:
            raise QuantizeError(f"{algo}/{kv_cache} needs calibration data")
        model = _load(src_dir, calib_dtype, plan.device, plan.device_map, plan.max_memory)
        t = time.monotonic()
        before = state_digests(model)  # to tell which weights calibration changes (AWQ folds scales)
        digest_seconds = time.monotonic() - t
        batches = calibration.batches
        dev = next(model.parameters()).device

        def forward_loop(m: Any) -> None:
            for i, b in enumerate(batches):
                m(b.to(dev))
                if progress is not None:
                    progress(i + 1, len(batches))

        t = time.monotonic()
        with torch.inference_mode(False), torch.no_grad():
            model = mtq.quantize(model, qcfg, forward_loop)
        record["calibration_seconds"] = time.monotonic() - t
        record["amax"] = amax_summary(model)
        t = time.monotonic()
        record["state"] = save_state(model, state, before)
        record["state"]["seconds"] = round(digest_seconds + time.monotonic() - t, 3)
        del model
        release_gpu_memory()
    record["config_fixes"] = {}
    for kind, where in placements.items():
        target = out_dir / kind
        shutil.rmtree(target, ignore_errors=True)
        if qcfg is None and kind == "unified":
            _copy_checkpoint(src_dir, target)
            record["config_fixes"][kind] = fix_unified_config(target, config)
            continue
        model = _load(src_dir, export_dtype, where.device, where.device_map, where.max_memory)
        if qcfg is not None:
            model = restore_state(model, state)
        if kind == "trtllm":
            record["decoder_type"] = trtllm_decoder_type(model)
        record["config_fixes"][kind] = export_model(model, kind, target, src_dir=src_dir, config=config,
                                                    dtype=export_dtype, tensor_parallel=tensor_parallel,
                                                    pipeline_parallel=pipeline_parallel)
        del model
        release_gpu_memory()
    record["seconds"] = time.monotonic() - start
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    atomic.write_text(out_dir / "quantize.json", json.dumps(record, indent=2, sort_keys=True))
    return record


def release_gpu_memory() -> None:
    """Give the GPU memory a deleted model held back to the driver.

    Quantize runs inside the trtbuild process, which lives on through the gates: torch's caching
    allocator would otherwise keep the calibration model's blocks reserved, and the vLLM baseline
    (which wants gpu_memory_utilization of each GPU free at start) or trtllm-serve would run out of
    memory on a GPU that nothing is using.
    """
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def trtllm_decoder_type(model: Any) -> str:
    """ModelOpt's own decoder_type for `model` (its MODEL_NAME_TO_TYPE: Mistral -> llama, Qwen2 -> qwen).

    Not HF's model_type: ModelOpt 0.47's TensorRT-LLM export refuses "qwen2" and "mistral"
    (tensorrt_llm_utils.py, convert_to_tensorrt_llm_config: NotImplementedError).
    """
    import importlib.metadata

    from modelopt.torch.export.model_utils import MODEL_NAME_TO_TYPE, get_model_type

    decoder = get_model_type(model)
    if decoder is None:
        version = importlib.metadata.version("nvidia-modelopt")
        raise QuantizeError(f"{type(model).__name__} has no TensorRT-LLM decoder type in ModelOpt {version}'s "
                            f"MODEL_NAME_TO_TYPE (class names containing one of: {', '.join(MODEL_NAME_TO_TYPE)}); "
                            "use export 'unified' (build.backend pytorch) for this model")
    return str(decoder)


def export_model(model: Any, kind: str, target: Path, *, src_dir: Path, config: dict[str, Any], dtype: Any,
                 tensor_parallel: int = 1, pipeline_parallel: int = 1) -> list[str]:
    """One ModelOpt export (it mutates `model`) plus tokenizer files; returns the config fixes made.

    Both exports get RoPE in the form their readers use (pipeline/quant/rope.py).
    """
    fixes: list[str] = []
    if kind == "unified":
        from modelopt.torch.export import export_hf_checkpoint

        export_hf_checkpoint(model, dtype=dtype, export_dir=target)
        fixes = fix_unified_config(target, config)
    elif kind == "trtllm":
        from modelopt.torch.export import export_tensorrt_llm_checkpoint

        decoder = trtllm_decoder_type(model)
        export_tensorrt_llm_checkpoint(model, decoder, dtype=dtype, export_dir=target,
                                       inference_tensor_parallel=tensor_parallel,
                                       inference_pipeline_parallel=pipeline_parallel)
        fixes = fix_trtllm_config(target, config) + fix_trtllm_qwen_type(target, config, decoder)
    else:
        raise QuantizeError(f"unknown export '{kind}'")
    copy_tokenizer(src_dir, target)
    return fixes


def fix_trtllm_qwen_type(trtllm_dir: Path, hf_config: dict[str, Any], decoder: str) -> list[str]:
    """Write `qwen_type`, which TensorRT-LLM's QWen model reads and ModelOpt's export leaves out here.

    ModelOpt fills the config from TensorRT-LLM's own `QWenConfig.from_hugging_face` only when
    tensorrt_llm imports (modelopt/torch/export/tensorrt_llm_utils.py, convert_to_tensorrt_llm_config);
    it cannot in a ModelOpt 0.47 environment (FACTS: the two cannot share one). TensorRT-LLM's
    QWenConfig has no default for it and QWenDecoderLayer branches on `config.qwen_type`
    (NVIDIA/TensorRT-LLM tensorrt_llm/models/qwen/config.py at 0428c188, model.py at 04a2cacb).
    """
    if decoder != "qwen":
        return []
    path = trtllm_dir / "config.json"
    cfg = json.loads(path.read_text())
    if "qwen_type" in cfg:
        return []
    tc = hf_config.get("text_config")
    cfg["qwen_type"] = str((tc if isinstance(tc, dict) else hf_config).get("model_type", "qwen2"))
    atomic.write_text(path, json.dumps(cfg, indent=4))
    return [f"qwen_type={cfg['qwen_type']}"]


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def _copy_checkpoint(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*", "__pycache__"))
