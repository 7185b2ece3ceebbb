"""Serving engines of TP/PP > 1 in Triton: orchestrator mode.

The tensorrtllm backend runs a multi-GPU engine either with one MPI rank per GPU (upstream's
`launch_triton_server.py --world_size N`, leader mode, which needs mpirun and gives up explicit
model control across ranks) or in orchestrator mode: one tritonserver, and the backend spawns
executor workers (`executor_worker_path`, which trtbuild renders). Read in NVIDIA/TensorRT-LLM
triton_backend/inflight_batcher_llm/src/libtensorrtllm.cc at c8c6df08bd0ead54cd47f7973e1e425c28a174cd:
line 64 (TRITONBACKEND_Initialize) reads TRTLLM_ORCHESTRATOR and treats `atoi(value) != 0` as on;
line 162 (TRITONBACKEND_ModelInstanceInitialize) spawns `device_ids.size()` workers, and ONE when
the model lists no gpu_device_ids, so the renderer lists every GPU of a TP/PP > 1 engine.
trtbuild uses orchestrator mode because publish and rollback switch versions through the model
control API of one server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ORCHESTRATOR_ENV = {"TRTLLM_ORCHESTRATOR": "1"}


def world_sizes(repository: Path) -> dict[str, int]:
    """Model name -> the largest TP x PP among its tensorrt bundles in a repository directory."""
    out: dict[str, int] = {}
    for manifest in Path(repository).glob("*/[0-9]*/bundle/manifest.json"):
        try:
            data: dict[str, Any] = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("backend") != "tensorrt":
            continue
        c = data.get("compatibility") or {}
        world = int(c.get("tensor_parallel") or 1) * int(c.get("pipeline_parallel") or 1)
        name = manifest.parents[2].name
        out[name] = max(out.get(name, 1), world)
    return out


def serving_env(repository: Path) -> dict[str, str]:
    """The environment tritonserver needs for the engines in `repository` (orchestrator mode for any
    multi-GPU engine; nothing otherwise, so single-GPU serving is exactly upstream's default)."""
    return dict(ORCHESTRATOR_ENV) if any(w > 1 for w in world_sizes(repository).values()) else {}
