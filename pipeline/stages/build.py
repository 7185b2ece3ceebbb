"""build: a quantized checkpoint becomes a bundle (engine or checkpoint + runtime options)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from pipeline.bundle import write_manifest
from pipeline.errors import StageError
from pipeline.quant.quantize import copy_tokenizer
from pipeline.recipe.hardware import GPUS
from pipeline.recipe.load import LoadedRecipe
from pipeline.recipe.schema import Executor
from pipeline.runner.executor import run_function
from pipeline.runner.stage import Stage, StageContext, StageOutput
from pipeline.stages.common import fields
from pipeline.util.files import link_tree

# fields that change how long a build runs or how it is launched, never what it produces. The
# executor's kind, python and image stay in: they name the TensorRT environment, whose versions go
# into the bundle (a venv upgraded in place, or a re-pushed image tag, is not seen: use --force).
IGNORED = frozenset({
    "tensorrt.executor.timeout_s", "tensorrt.executor.command_prefix",
    "pytorch.executor.timeout_s", "pytorch.executor.command_prefix",
    "tensorrt.timing_cache", "reference.threads",
})


class BuildStage(Stage):
    name = "build"
    inputs = ("fetch", "quantize")
    tools: ClassVar[tuple[str, ...]] = ("tensorrt-llm", "tensorrt")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        r = loaded.recipe
        # not the recipe digest: a change to gate criteria must not rebuild the engine
        return {"build": fields(r.build, exclude=IGNORED), "target": fields(r.target), "name": r.name}

    def run(self, ctx: StageContext) -> StageOutput:
        r = ctx.recipe
        backend = r.build.backend
        bundle = ctx.workdir / "bundle"
        bundle.mkdir()
        quant = ctx.inputs["quantize"]
        versions: dict[str, str | None] = {"tensorrt": None, "tensorrt_llm": None}
        if backend == "reference":
            runtime = build_reference(ctx, Path(quant.outputs["unified"]), bundle)
            verified: bool | str = "reference runtime loads the checkpoint at serve time"
        elif backend == "tensorrt":
            from pipeline.backends.tensorrt import build_engine

            versions = build_versions(r.build.tensorrt.executor, ctx.workdir)
            ckpt = Path(quant.outputs["trtllm"])
            facts = build_engine(r, checkpoint_dir=ckpt, output_dir=bundle / "engine",
                                 timing_cache=Path(r.build.tensorrt.timing_cache).resolve(),
                                 log=ctx.workdir / "trtllm-build.log")
            if versions["tensorrt_llm"] not in (None, facts["tensorrt_llm"]):
                raise StageError(self.name, f"trtllm-build wrote an engine for TensorRT-LLM {facts['tensorrt_llm']}, "
                                 f"but its environment has TensorRT-LLM {versions['tensorrt_llm']}",
                                 hint="build.tensorrt.executor must name one TensorRT-LLM environment or image")
            versions["tensorrt_llm"] = facts["tensorrt_llm"]  # the engine's own word
            (bundle / "tokenizer").mkdir()
            copy_tokenizer(ckpt, bundle / "tokenizer")
            runtime = {"kind": "tensorrt", "engine": "engine", "tokenizer": "tokenizer", "engine_config": facts}
            verified = "engine built by trtllm-build; loads are checked at publish"
        else:
            from pipeline.backends.pytorch import WARMUP, llm_api_options, write_options

            executor = r.build.pytorch.executor
            versions = build_versions(executor, ctx.workdir)
            link_tree(Path(quant.outputs["unified"]), bundle / "checkpoint")
            options = llm_api_options(r)
            write_options(bundle / "llm_api_options.yaml", options)
            # where TensorRT-LLM is: the pytorch executor's interpreter or container
            warm = run_function(WARMUP, {"bundle_dir": str((bundle / "checkpoint").resolve()),
                                         "options_path": str((bundle / "llm_api_options.yaml").resolve())},
                                executor=executor, log=ctx.workdir / "warmup.log")
            runtime = {"kind": "pytorch", "checkpoint": "checkpoint", "options": "llm_api_options.yaml"}
            verified = bool(warm) or ("not verified on a runtime (tensorrt_llm not importable in the "
                                      f"build.pytorch executor, kind {executor.kind})")
        compat = compatibility_key(ctx.loaded, quant.summary, **versions)
        provenance = provenance_of(ctx)
        if backend != "reference":  # the build environment's, not this process's
            provenance["tools"].update({"tensorrt": versions["tensorrt"], "tensorrt-llm": versions["tensorrt_llm"]})
        provenance["verified_on_runtime"] = verified
        bundle_id = write_manifest(bundle, name=r.name, backend=backend, provenance=provenance,
                                   compatibility=compat, runtime=runtime)
        return StageOutput(outputs={"bundle": "bundle"},
                           summary={"bundle_id": bundle_id, "backend": backend, "compatibility": compat},
                           digest=bundle_id)


def build_versions(executor: Executor, workdir: Path) -> dict[str, str | None]:
    """TensorRT and TensorRT-LLM versions where the build runs (trtllm_versions.probe under `executor`)."""
    from pipeline.backends.trtllm_versions import PROBE

    got = run_function(PROBE, {}, executor=executor, log=workdir / "versions.log")
    return {"tensorrt": got.get("tensorrt"), "tensorrt_llm": got.get("tensorrt_llm")}


def build_reference(ctx: StageContext, unified: Path, bundle: Path) -> dict[str, Any]:
    """The unified checkpoint + tokenizer, and the reference runtime's options."""
    link_tree(unified, bundle / "checkpoint")
    b = ctx.recipe.build
    return {"kind": "reference", "checkpoint": "checkpoint", "dtype": b.reference.dtype,
            "max_batch_size": b.max_batch_size, "max_seq_len": b.max_seq_len,
            "max_num_tokens": b.max_num_tokens}


def compatibility_key(loaded: LoadedRecipe, quant_summary: dict[str, Any], *, tensorrt: str | None,
                      tensorrt_llm: str | None) -> dict[str, Any]:
    r = loaded.recipe
    gpu = GPUS[r.target.gpu]
    return {
        "backend": r.build.backend, "gpu": gpu.name, "sm": gpu.sm, "arch": gpu.arch,
        "tensorrt": tensorrt, "tensorrt_llm": tensorrt_llm,
        "tensor_parallel": r.target.tensor_parallel, "pipeline_parallel": r.target.pipeline_parallel,
        "max_batch_size": r.build.max_batch_size, "max_seq_len": r.build.max_seq_len,
        "max_num_tokens": r.build.max_num_tokens,
        "quant_algo": r.quantize.algo, "kv_cache_quant_algo": r.quantize.kv_cache,
    }


def provenance_of(ctx: StageContext) -> dict[str, Any]:
    fetch = ctx.inputs.get("fetch")
    quant = ctx.inputs["quantize"].summary
    src = dict(fetch.summary) if fetch else {}
    src.pop("summary", None)
    src["digest"] = fetch.digest if fetch else None
    tools: dict[str, str | None] = {}
    for dist in ("trtbuild", "nvidia-modelopt", "torch", "transformers", "tensorrt-llm", "tensorrt"):
        try:
            tools[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            tools[dist] = None
    calib = quant.get("calibration") or {}
    return {
        "recipe": ctx.loaded.recipe.name, "recipe_digest": ctx.loaded.digest, "source": src,
        "calibration_digest": calib.get("digest"), "quantization": quant.get("quant_config_name")
        or {"algo": ctx.recipe.quantize.algo, "kv_cache": ctx.recipe.quantize.kv_cache},
        "tools": tools, "git_commit": git_commit(ctx.loaded.path.parent),
    }


def git_commit(where: Path) -> str | None:
    """The commit of the repository holding the recipe (None outside git); '+dirty' if modified."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))
