"""Bundles of the GPU backends built on this CPU machine for repository rendering tests.

The tensorrt bundle's engine comes from the trtllm-build stand-in (tests/data/trtllm), which
writes a real engine config.json (TensorRT-LLM 1.2's layout) and rank{N}.engine placeholders; the
pytorch bundle holds a checkpoint stand-in and the LLM API options the build stage writes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from pipeline.backends.pytorch import llm_api_options, write_options
from pipeline.backends.tensorrt import build_engine
from pipeline.bundle import write_manifest
from pipeline.recipe.load import load_recipe
from pipeline.recipe.schema import Executor, Recipe
from tests.conftest import ROOT

STAND_IN = ROOT / "tests" / "data" / "trtllm"


def recipe(name: str, **build: object) -> Recipe:
    r = load_recipe(ROOT / "recipes" / f"{name}.yaml", env={"PWD": "/w"}).recipe
    b = r.build.model_copy(update={**build, "tensorrt": r.build.tensorrt.model_copy(update={"executor": Executor()})})
    return r.model_copy(update={"build": b})


def _compat(r: Recipe, backend: str) -> dict[str, object]:
    from pipeline.recipe.hardware import GPUS

    return {"backend": backend, "gpu": r.target.gpu, "sm": GPUS[r.target.gpu].sm,
            "tensor_parallel": r.target.tensor_parallel, "pipeline_parallel": r.target.pipeline_parallel,
            "tensorrt_llm": "1.2.0"}


def _checkpoint(root: Path, tp: int) -> Path:
    ckpt = root / "trtllm_ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({
        "architecture": "LlamaForCausalLM", "dtype": "bfloat16", "num_hidden_layers": 2, "hidden_size": 64,
        "vocab_size": 128, "max_position_embeddings": 4096,
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}}))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    for rank in range(tp):
        (ckpt / f"rank{rank}.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return ckpt


def tensorrt_bundle(root: Path, r: Recipe, *, seed: int = 0) -> Path:
    """An engine bundle as the build stage lays it out (engine/, tokenizer/, runtime.engine_config)."""
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{STAND_IN}{os.pathsep}{old_path}"
    try:
        bundle = root / f"bundle-trt-{seed}"
        facts = build_engine(r, checkpoint_dir=_checkpoint(root / f"ck{seed}", r.target.tensor_parallel),
                             output_dir=bundle / "engine", timing_cache=root / "timing.cache",
                             log=root / f"build{seed}.log")
    finally:
        os.environ["PATH"] = old_path
    (bundle / "tokenizer").mkdir()
    (bundle / "tokenizer" / "tokenizer.json").write_text(json.dumps({"seed": seed}))
    write_manifest(bundle, name=r.name, backend="tensorrt", provenance={"seed": seed},
                   compatibility=_compat(r, "tensorrt"),
                   runtime={"kind": "tensorrt", "engine": "engine", "tokenizer": "tokenizer", "engine_config": facts})
    return bundle


def pytorch_bundle(root: Path, r: Recipe, *, seed: int = 0) -> Path:
    """A PyTorch-backend bundle: checkpoint/ plus llm_api_options.yaml from the recipe."""
    bundle = root / f"bundle-pt-{seed}"
    (bundle / "checkpoint").mkdir(parents=True)
    (bundle / "checkpoint" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                                    "seed": seed}))
    write_options(bundle / "llm_api_options.yaml", llm_api_options(r))
    write_manifest(bundle, name=r.name, backend="pytorch", provenance={"seed": seed},
                   compatibility=_compat(r, "pytorch"),
                   runtime={"kind": "pytorch", "checkpoint": "checkpoint", "options": "llm_api_options.yaml"})
    return bundle
