"""tensorrt backend: a TensorRT-LLM checkpoint becomes rank{N}.engine files with `trtllm-build`.

Only the 1.2 line of TensorRT-LLM ships `trtllm-build`. This module builds its argv from the
recipe, runs it where the recipe's executor says (its own venv or the NGC container), and reads
back the engine's config.json: the facts a runtime must match (TRT-LLM version, TP/PP, quantization,
build limits, plugins). Flag names and value forms were read from TensorRT-LLM's source; see
trtllm_facts.py and tests/data/upstream/trtllm_build.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.backends import trtllm_facts as facts
from pipeline.errors import StageError
from pipeline.recipe.schema import Recipe
from pipeline.runner.executor import run_command
from pipeline.util.atomic import staged_dir

STAGE = "build"
ENGINE_RE = re.compile(r"^rank(\d+)\.engine$")

# plugin_config entries reported by read_engine_config (None when an engine lacks one)
PLUGIN_FACTS = (
    "dtype", "gemm_plugin", "gpt_attention_plugin", "nccl_plugin", "context_fmha",
    "paged_kv_cache", "tokens_per_block", "use_paged_context_fmha", "use_fp8_context_fmha",
    "multiple_profiles", "remove_input_padding", "use_fused_mlp",
)


def _switch(on: bool) -> str:
    return facts.ENABLE if on else facts.DISABLE


def use_fp8_context_fmha(recipe: Recipe) -> bool:
    """FP8 context FMHA needs an FP8 KV cache and FP8-family weights (TensorRT-LLM builder.build)."""
    q = recipe.quantize
    return q.kv_cache == "fp8" and q.algo in facts.FP8_CONTEXT_FMHA_ALGOS


def trtllm_build_argv(recipe: Recipe, *, checkpoint_dir: Path, output_dir: Path,
                      timing_cache: Path) -> list[str]:
    """The `trtllm-build` command line for this recipe (TensorRT-LLM 1.2 flags and value forms).

    TP and PP are not build flags: they were fixed when the checkpoint was converted; `--workers`
    only builds the world_size engines in parallel. The timing cache is read and written in place
    so that rebuilds reuse kernel timings.
    """
    b, t, q = recipe.build, recipe.build.tensorrt, recipe.quantize
    if b.backend != "tensorrt":
        raise StageError(STAGE, f"trtllm-build is for backend 'tensorrt', recipe '{recipe.name}' uses "
                         f"'{b.backend}'")
    if t.gemm_plugin == "fp8" and q.algo != "fp8":
        raise StageError(STAGE, f"build.tensorrt.gemm_plugin 'fp8' runs FP8 GEMMs with the checkpoint's "
                         f"FP8 scales, but quantize.algo is '{q.algo}'",
                         hint="use gemm_plugin auto (or disable), or quantize with algo fp8")
    argv = [
        "trtllm-build",
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(output_dir),
        "--max_batch_size", str(b.max_batch_size),
        "--max_input_len", str(b.max_input_len or b.max_seq_len),
        "--max_seq_len", str(b.max_seq_len),
        "--max_num_tokens", str(b.max_num_tokens),
        "--max_beam_width", str(t.max_beam_width),
        "--kv_cache_type", "paged",
        "--gemm_plugin", t.gemm_plugin,
        "--use_paged_context_fmha", _switch(t.use_paged_context_fmha),
    ]
    if use_fp8_context_fmha(recipe):
        argv += ["--use_fp8_context_fmha", facts.ENABLE]
    argv += [
        "--multiple_profiles", _switch(t.multiple_profiles),
        "--tokens_per_block", str(t.tokens_per_block),
        "--workers", str(recipe.target.world_size),
        "--input_timing_cache", str(timing_cache),
        "--output_timing_cache", str(timing_cache),
    ]
    return argv


# --------------------------------------------------------------------------- engine config
def _load_json(path: Path, what: str, hint: str | None = None) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(STAGE, f"{path.parent}: no {path.name}; not a {what} directory", hint=hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StageError(STAGE, f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise StageError(STAGE, f"{path}: expected a JSON object")
    return data


def _mapping(pretrained: dict[str, Any], where: Path) -> tuple[int, int, int]:
    mapping = pretrained.get("mapping")
    if not isinstance(mapping, dict):
        raise StageError(STAGE, f"{where}: pretrained_config.mapping is missing")
    tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    cp = int(mapping.get("cp_size", 1))
    world = int(mapping.get("world_size", tp * pp * cp))
    if world != tp * pp * cp:
        raise StageError(STAGE, f"{where}: mapping world_size {world} != tp_size {tp} x pp_size {pp}"
                         f" x cp_size {cp}")
    return tp, pp, world


def read_engine_config(engine_dir: Path) -> dict[str, Any]:
    """The compatibility facts of a built engine directory; refuses an incomplete one.

    An engine runs only with the TRT-LLM version, GPU architecture and TP/PP mapping it was built
    for, so these facts go into the bundle manifest.
    """
    engine_dir = Path(engine_dir)
    cfg_path = engine_dir / facts.ENGINE_CONFIG
    cfg = _load_json(cfg_path, "TensorRT-LLM engine",
                     hint="trtllm-build writes config.json and one rank{N}.engine per rank")
    missing = [k for k in ("version", "pretrained_config", "build_config") if k not in cfg]
    if missing:
        raise StageError(STAGE, f"{cfg_path}: missing {', '.join(missing)}; not an engine config "
                         "(a TRT-LLM checkpoint config.json is not an engine)")
    pretrained, build = cfg["pretrained_config"], cfg["build_config"]
    if not isinstance(pretrained, dict) or not isinstance(build, dict):
        raise StageError(STAGE, f"{cfg_path}: pretrained_config and build_config must be objects")
    tp, pp, world = _mapping(pretrained, cfg_path)

    present = sorted(int(m.group(1)) for p in engine_dir.iterdir() if (m := ENGINE_RE.match(p.name)))
    expected = list(range(world))
    lacking = [facts.engine_file(r) for r in expected if r not in present
               or (engine_dir / facts.engine_file(r)).stat().st_size == 0]
    if lacking:
        raise StageError(STAGE, f"{engine_dir}: world_size {world} (tp {tp} x pp {pp}) needs "
                         f"{', '.join(facts.engine_file(r) for r in expected)}; missing or empty: "
                         f"{', '.join(lacking)}", hint="the build did not finish; rebuild the engine")
    extra = [facts.engine_file(r) for r in present if r >= world]
    if extra:
        raise StageError(STAGE, f"{engine_dir}: {', '.join(extra)} do not belong to a world_size {world} "
                         "engine (left over from another build?)")

    quant = pretrained.get("quantization") or {}
    plugins = build.get("plugin_config") or {}
    return {
        "tensorrt_llm": str(cfg["version"]),  # the compatibility key's name for it
        "architecture": pretrained.get("architecture"),
        "dtype": pretrained.get("dtype"),
        "quant_algo": quant.get("quant_algo"),
        "kv_cache_quant_algo": quant.get("kv_cache_quant_algo"),
        "tp_size": tp,
        "pp_size": pp,
        "world_size": world,
        "max_batch_size": build.get("max_batch_size"),
        "max_input_len": build.get("max_input_len"),
        "max_seq_len": build.get("max_seq_len"),
        "max_num_tokens": build.get("max_num_tokens"),
        "max_beam_width": build.get("max_beam_width"),
        "kv_cache_type": build.get("kv_cache_type"),
        "plugins": {k: plugins.get(k) for k in PLUGIN_FACTS},
        "engines": [facts.engine_file(r) for r in expected],
    }


def read_checkpoint_mapping(checkpoint_dir: Path) -> tuple[int, int]:
    """(tp, pp) of a TensorRT-LLM checkpoint; it must have one rank{N}.safetensors per rank."""
    cfg_path = Path(checkpoint_dir) / facts.ENGINE_CONFIG
    cfg = _load_json(cfg_path, "TensorRT-LLM checkpoint")
    tp, pp, world = _mapping(cfg, cfg_path)
    lacking = [facts.checkpoint_file(r) for r in range(world)
               if not (Path(checkpoint_dir) / facts.checkpoint_file(r)).is_file()]
    if lacking:
        raise StageError(STAGE, f"{checkpoint_dir}: checkpoint for world_size {world} lacks "
                         f"{', '.join(lacking)}")
    return tp, pp


def _check_against_recipe(recipe: Recipe, got: dict[str, Any], where: Path) -> None:
    want = {
        "tp_size": recipe.target.tensor_parallel,
        "pp_size": recipe.target.pipeline_parallel,
        "quant_algo": facts.QUANT_ALGO[recipe.quantize.algo],
        "kv_cache_quant_algo": facts.KV_CACHE_QUANT_ALGO[recipe.quantize.kv_cache],
    }
    wrong = [f"{k} {got[k]!r} (recipe wants {v!r})" for k, v in want.items() if got[k] != v]
    if wrong:
        raise StageError(STAGE, f"{where}: engine does not match the recipe: {'; '.join(wrong)}")
    if not got["tensorrt_llm"].startswith(facts.TRTLLM_LINE + "."):
        raise StageError(STAGE, f"{where}: built by TensorRT-LLM {got['tensorrt_llm']}, the tensorrt "
                         f"backend supports the {facts.TRTLLM_LINE}.x line only",
                         hint="set build.tensorrt.executor to a TensorRT-LLM 1.2 environment or image")


def build_engine(recipe: Recipe, *, checkpoint_dir: Path, output_dir: Path, timing_cache: Path,
                 log: Path) -> dict[str, Any]:
    """Run trtllm-build into a staged directory, check the result, then move it to output_dir.

    Nothing half-built ever appears under output_dir. Returns read_engine_config's facts.
    """
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    tp, pp = read_checkpoint_mapping(checkpoint_dir)
    target = recipe.target
    if (tp, pp) != (target.tensor_parallel, target.pipeline_parallel):
        raise StageError(STAGE, f"{checkpoint_dir}: checkpoint is tp {tp} x pp {pp}, recipe target is "
                         f"tp {target.tensor_parallel} x pp {target.pipeline_parallel}",
                         hint="TP/PP are fixed when the checkpoint is converted; re-export it "
                              "(quantize stage) for this target")
    Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(output_dir) as tmp:
        argv = trtllm_build_argv(recipe, checkpoint_dir=checkpoint_dir, output_dir=tmp,
                                 timing_cache=Path(timing_cache))
        run_command(argv, executor=recipe.build.tensorrt.executor, log=log)
        got = read_engine_config(tmp)
        _check_against_recipe(recipe, got, output_dir)
    return got
