"""Our side of the TensorRT-LLM 1.2 contract against a real install (GPU host or the NGC container).

Skipped unless `tensorrt_llm` imports. Checks that the recorded flag and key lists still describe
the installed TensorRT-LLM, that every trtllm-build argv we emit parses with the real parser and its
flags appear in `trtllm-build --help`, and that our LLM API options construct TorchLlmArgs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.backends.pytorch import llm_api_options
from pipeline.backends.tensorrt import trtllm_build_argv
from pipeline.recipe.load import load_recipe
from pipeline.recipe.schema import Recipe
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is None, reason="needs tensorrt_llm"),
]

DATA = ROOT / "tests" / "data" / "trtllm"
FLAGS = json.loads((ROOT / "tests" / "data" / "upstream" / "trtllm_build.json").read_text())["flags"]
KEYS = json.loads((ROOT / "tests" / "data" / "upstream" / "llm_api.json").read_text())["models"]
RECIPES = {p.stem: load_recipe(p, env={"PWD": "/w"}).recipe for p in sorted((ROOT / "recipes").glob("*.yaml"))}
TENSORRT = sorted(n for n, r in RECIPES.items() if r.build.backend == "tensorrt")


def _argv(recipe: Recipe, tmp_path: Path) -> list[str]:
    return trtllm_build_argv(recipe, checkpoint_dir=tmp_path / "ckpt", output_dir=tmp_path / "engine",
                             timing_cache=tmp_path / "trt.cache")


def test_installed_version_is_the_1_2_line() -> None:
    import tensorrt_llm

    assert tensorrt_llm.__version__.startswith("1.2."), tensorrt_llm.__version__


def test_recorded_flags_match_the_real_parser() -> None:
    from tensorrt_llm.commands.build import parse_arguments

    parser = parse_arguments()
    real = {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    recorded = set(FLAGS) | {a for spec in FLAGS.values() for a in spec.get("aliases", [])}
    assert recorded == real, f"only recorded: {sorted(recorded - real)}; only real: {sorted(real - recorded)}"
    for action in parser._actions:
        flag = next((s for s in action.option_strings if s in FLAGS), None)
        if flag and action.choices is not None and FLAGS[flag]["kind"] != "choice":
            assert set(action.choices) == set(FLAGS[flag]["choices"]), flag


@pytest.mark.parametrize("name", TENSORRT)
def test_real_parser_accepts_our_argv(name: str, tmp_path: Path) -> None:
    from tensorrt_llm.commands.build import parse_arguments

    argv = _argv(RECIPES[name], tmp_path)
    ns = parse_arguments().parse_args(argv[1:])  # SystemExit(2) on any unknown flag or bad value
    assert ns.workers == RECIPES[name].target.world_size
    assert ns.use_paged_context_fmha == "enable"


@pytest.mark.parametrize("name", TENSORRT)
def test_help_lists_our_flags(name: str, tmp_path: Path) -> None:
    exe = shutil.which("trtllm-build")
    if exe is None:
        pytest.skip("trtllm-build console script not on PATH")
    text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=300, check=True).stdout
    for tok in _argv(RECIPES[name], tmp_path)[1:]:
        if tok.startswith("--"):
            assert tok in text, f"{tok} not in trtllm-build --help"


def _torch_llm_args() -> Any:
    try:
        from tensorrt_llm.llmapi import TorchLlmArgs
    except ImportError:
        from tensorrt_llm.llmapi.llm_args import TorchLlmArgs
    return TorchLlmArgs


def test_recorded_keys_exist_in_the_real_models() -> None:
    from tensorrt_llm.llmapi.llm_args import CudaGraphConfig, KvCacheConfig

    args = _torch_llm_args()
    assert set(KEYS["TorchLlmArgs"]) <= set(args.model_fields)
    assert set(KEYS["KvCacheConfig"]) <= set(KvCacheConfig.model_fields)
    assert set(KEYS["CudaGraphConfig"]) <= set(CudaGraphConfig.model_fields)


@pytest.mark.parametrize("name", ["llama70b-nvfp4-b200", "llama70b"])
def test_options_construct_torch_llm_args(name: str, tmp_path: Path) -> None:
    recipe = RECIPES[name]
    recipe = recipe.model_copy(update={"build": recipe.build.model_copy(update={"backend": "pytorch"})})
    opts = llm_api_options(recipe)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    args = _torch_llm_args()(model=str(model_dir), skip_tokenizer_init=True, **opts)
    assert args.kv_cache_config.free_gpu_memory_fraction == opts["kv_cache_config"]["free_gpu_memory_fraction"]
    assert args.kv_cache_config.dtype == opts["kv_cache_config"]["dtype"]
    assert list(args.cuda_graph_config.batch_sizes) == opts["cuda_graph_config"]["batch_sizes"]
    assert args.tensor_parallel_size == recipe.target.tensor_parallel
