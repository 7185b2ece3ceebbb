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
