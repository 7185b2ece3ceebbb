"""Will calibration fit? Estimated from config.json before anything is loaded.

Calibrating Llama-3.3-70B in bf16 holds about 141 GB of weights; finding that out after loading
for twenty minutes is what this avoids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import QuantizeError

GiB = 1 << 30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def parameter_count(config: dict[str, Any]) -> int:
    c = config.get("text_config", config)
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or h // heads
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    embed = vocab * h * (1 if c.get("tie_word_embeddings", False) else 2)
    return layers * per_layer + embed + h


def estimate_bytes(config: dict[str, Any], dtype: str = "bfloat16", *, batch_tokens: int = 512) -> int:
    """Weights in `dtype` plus activation headroom for one calibration batch (and 10% slack)."""
    c = config.get("text_config", config)
    weights = parameter_count(config) * BYTES[dtype]
    activations = batch_tokens * (c["hidden_size"] * 16 + c["vocab_size"]) * 4
    return int((weights + activations) * 1.1)


@dataclass
class MemoryPlan:
    device: str  # "cuda" or "cpu"
    device_map: str | None
    max_memory: dict[Any, int] = field(default_factory=dict)
    need_bytes: int = 0

    def describe(self) -> str:
        where = ", ".join(f"{k}: {v / GiB:.0f} GiB" for k, v in self.max_memory.items())
        return f"needs ~{self.need_bytes / GiB:.1f} GiB on {self.device}" + (f" ({where})" if where else "")


def plan_memory(config: dict[str, Any], *, gpus: list[int], cpu_free: int, dtype: str = "bfloat16",
                batch_tokens: int = 512) -> MemoryPlan:
    """Pick where calibration runs: one GPU, several GPUs, GPUs with CPU offload, or the CPU."""
    need = estimate_bytes(config, dtype, batch_tokens=batch_tokens)
    usable = [int(g * 0.9) for g in gpus]
    if usable and usable[0] >= need:
        return MemoryPlan("cuda", None, {0: usable[0]}, need)
    if usable and sum(usable) >= need:
        return MemoryPlan("cuda", "auto", dict(enumerate(usable)), need)
    cpu_usable = int(cpu_free * 0.8)
    if usable and sum(usable) + cpu_usable >= need:
        mm: dict[Any, int] = dict(enumerate(usable))
        mm["cpu"] = cpu_usable
        return MemoryPlan("cuda", "auto", mm, need)
    if not usable and cpu_usable >= need:
        return MemoryPlan("cpu", None, {"cpu": cpu_usable}, need)
    found = (f"{len(gpus)} GPU(s) with {sum(gpus) / GiB:.0f} GiB free" if gpus else "no GPU") + \
        f" and {cpu_free / GiB:.0f} GiB free CPU RAM"
    raise QuantizeError(f"calibration needs ~{need / GiB:.0f} GiB ({dtype} weights of "
                        f"{parameter_count(config) / 1e9:.1f}B parameters + activations); found {found}; "
                        "use a host with more GPU memory or RAM")


# Whether each export takes a model that accelerate offloads to the CPU (ModelOpt 0.47, installed source):
# - unified: export_hf_checkpoint checks `has_accelerate_offload(model)` and streams the offloaded
#   layers (modelopt/torch/export/unified_export_hf.py:1555-1570,
#   `_export_transformers_checkpoint_streaming`); its whole-state-dict path refuses them (:970).
# - trtllm: export_tensorrt_llm_checkpoint (model_config_export.py:439) reads each module's
#   `.weight` directly and has no offload check: offloaded weights are on the meta device there.
TAKES_OFFLOADED = {"unified": True, "trtllm": False}
# bytes per parameter of the weights an export writes, by recipe algo (fp8: e4m3; nvfp4: 4 bits
# + an fp8 scale per 16; int4 AWQ: 4 bits + scales); None: the export dtype
EXPORT_WEIGHT_BYTES: dict[str, float | None] = {"none": None, "fp8": 1.0, "nvfp4": 0.5625, "int4_awq": 0.53,
                                                 "w4a8_awq": 0.53}


@dataclass
class ExportPlacement:
    """Where one export's model is loaded, and the memory that needs."""

    kind: str
    device: str  # "cuda" or "cpu"
    device_map: str | None
    max_memory: dict[Any, int]
    need_bytes: int
    reason: str

    def describe(self) -> str:
        where = "materialized on the CPU" if self.device == "cpu" and self.device_map is None else self.device
        if self.device_map:
            where += f" (device_map {self.device_map}: " + ", ".join(f"{k}" for k in self.max_memory) + ")"
        return f"{self.kind}: {where}, needs ~{self.need_bytes / GiB:.1f} GiB; {self.reason}"

    def record(self) -> dict[str, Any]:
        return {"device": self.device, "device_map": self.device_map,
                "max_memory": {str(k): v for k, v in self.max_memory.items()}, "need_bytes": self.need_bytes,
                "reason": self.reason}


def export_cpu_bytes(config: dict[str, Any], dtype: str = "bfloat16", algo: str = "fp8") -> int:
    """A TensorRT-LLM export on the CPU: the model in `dtype` plus the weights it writes, and 10% slack."""
    params = parameter_count(config)
    out = EXPORT_WEIGHT_BYTES.get(algo)
    out_bytes = BYTES[dtype] if out is None else out
    return int(params * (BYTES[dtype] + out_bytes) * 1.1)


def export_placement(plan: MemoryPlan, kind: str, *, config: dict[str, Any], cpu_free: int,
                     dtype: str = "bfloat16", algo: str = "fp8") -> ExportPlacement:
    """Where export `kind` runs, given the calibration plan: pure, for `quantize` and for planners.

    An export that cannot take an offloaded model (see TAKES_OFFLOADED) gets one fully
    materialized on the CPU when calibration offloads; it is refused here, before calibration,
    when that does not fit in CPU RAM.
    """
    if kind not in TAKES_OFFLOADED:
        raise QuantizeError(f"unknown export '{kind}' (known: {', '.join(sorted(TAKES_OFFLOADED))})")
    offloaded = plan.device == "cuda" and "cpu" in plan.max_memory
    if not offloaded:
        return ExportPlacement(kind, plan.device, plan.device_map, dict(plan.max_memory), plan.need_bytes,
                               "where calibration ran")
    if TAKES_OFFLOADED[kind]:
        return ExportPlacement(kind, plan.device, plan.device_map, dict(plan.max_memory), plan.need_bytes,
                               "ModelOpt's HF export streams offloaded layers")
    need = export_cpu_bytes(config, dtype, algo)
    usable = int(cpu_free * 0.8)
    if need > usable:
        raise QuantizeError(
            f"calibration offloads to the CPU, which ModelOpt's TensorRT-LLM export cannot read; the {kind} export "
            f"needs ~{need / GiB:.0f} GiB of CPU RAM ({dtype} weights of {parameter_count(config) / 1e9:.1f}B "
            f"parameters plus the exported weights) and found {cpu_free / GiB:.0f} GiB free (80% usable); "
            "use a host with more RAM or enough GPU memory to calibrate without offload")
    return ExportPlacement(kind, "cpu", None, {"cpu": usable}, need,
                           "calibration offloads and ModelOpt's TensorRT-LLM export cannot read offloaded weights")


def available() -> tuple[list[int], int]:
    """Free bytes per visible GPU, and free CPU RAM."""
    gpus: list[int] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    except Exception:
        gpus = []
    cpu_free = 0
    try:
        with open("/proc/meminfo") as f:  # noqa: PTH123
            for line in f:
                if line.startswith("MemAvailable:"):
                    cpu_free = int(line.split()[1]) * 1024
    except OSError:
        import os

        cpu_free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return gpus, cpu_free
