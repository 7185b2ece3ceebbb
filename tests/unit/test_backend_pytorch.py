"""pytorch backend: LLM API options against the recorded TensorRT-LLM 1.2 keys; warm-up load."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import upstream
from pipeline.backends.pytorch import cuda_graph_batch_sizes, llm_api_options, warmup_load, write_options
from pipeline.errors import StageError
from pipeline.recipe.load import load_recipe
from pipeline.recipe.schema import Recipe
from tests.conftest import ROOT

KEYS_DOC = json.loads((ROOT / "tests" / "data" / "upstream" / "llm_api.json").read_text())
TOP, KV, CUDA_GRAPH = (set(KEYS_DOC["models"][k]) for k in ("TorchLlmArgs", "KvCacheConfig", "CudaGraphConfig"))
TYPES = {"int": int, "bool": bool, "str": str, "float": float}
RECIPES = {p.stem: load_recipe(p, env={"PWD": "/w"}).recipe for p in sorted((ROOT / "recipes").glob("*.yaml"))}


def as_pytorch(recipe: Recipe) -> Recipe:
    return recipe.model_copy(update={"build": recipe.build.model_copy(update={"backend": "pytorch"})})


CASES = {name: r for name, r in RECIPES.items() if r.build.backend == "pytorch"}
CASES["llama70b-as-pytorch"] = as_pytorch(RECIPES["llama70b"])


def check_keys(options: dict[str, Any]) -> None:
    unknown = set(options) - TOP
    assert not unknown, f"not TorchLlmArgs fields in 1.2: {sorted(unknown)}"
    assert not set(options["kv_cache_config"]) - KV, "unknown KvCacheConfig keys"
    assert not set(options["cuda_graph_config"]) - CUDA_GRAPH, "unknown CudaGraphConfig keys"


def check_types(options: dict[str, Any]) -> None:
    for dotted, kind in KEYS_DOC["types"].items():
        head, _, leaf = dotted.partition(".")
        if head not in options:
            continue
        value = options[head][leaf] if leaf else options[head]
        if kind == "list[int]":
            assert isinstance(value, list) and value and all(type(v) is int and v > 0 for v in value), dotted
        else:
            # bool is an int subclass: demand the exact type
            assert type(value) is TYPES[kind] or (kind == "float" and type(value) is int), (dotted, value)


def test_key_list_is_recorded_with_its_source() -> None:
    assert KEYS_DOC["source"]["repo"] == "NVIDIA/TensorRT-LLM"
    assert KEYS_DOC["source"]["path"] == "tensorrt_llm/llmapi/llm_args.py"
    assert {"kv_cache_config", "cuda_graph_config", "enable_chunked_prefill", "backend"} <= TOP
    assert {"free_gpu_memory_fraction", "dtype", "enable_block_reuse"} <= KV
    assert {"batch_sizes", "max_batch_size", "enable_padding"} == CUDA_GRAPH


def test_pytorch_cases() -> None:
    assert sorted(CASES) == ["llama70b-as-pytorch", "llama70b-nvfp4-b200"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_options_use_only_1_2_keys_with_right_types(name: str) -> None:
    recipe = CASES[name]
    opts = llm_api_options(recipe)
    check_keys(opts)
    assert upstream.check_llm_api_options(opts) == []
    check_types(opts)
    b = recipe.build
    assert opts["backend"] == "pytorch" and opts["trust_remote_code"] is False
    assert opts["tensor_parallel_size"] == recipe.target.tensor_parallel
    assert opts["pipeline_parallel_size"] == recipe.target.pipeline_parallel
    assert (opts["max_batch_size"], opts["max_num_tokens"], opts["max_seq_len"]) == (
        b.max_batch_size, b.max_num_tokens, b.max_seq_len)
    assert opts["kv_cache_config"] == {
        "free_gpu_memory_fraction": b.pytorch.kv_cache_free_gpu_memory_fraction,
        "dtype": "fp8", "enable_block_reuse": True}
    assert opts["enable_chunked_prefill"] is True
    assert max(opts["cuda_graph_config"]["batch_sizes"]) <= b.max_batch_size


def test_nvfp4_recipe_values() -> None:
    opts = llm_api_options(CASES["llama70b-nvfp4-b200"])
    assert opts["kv_cache_config"]["free_gpu_memory_fraction"] == 0.85
    assert opts["tensor_parallel_size"] == 1
    assert opts["cuda_graph_config"] == {"batch_sizes": [1, 2, 4, 8, 16, 32, 64]}


def test_llama70b_as_pytorch_is_tp2() -> None:
    assert llm_api_options(CASES["llama70b-as-pytorch"])["tensor_parallel_size"] == 2


def test_kv_dtype_auto_unless_fp8() -> None:
    r = CASES["llama70b-nvfp4-b200"]
    for kv, want in (("none", "auto"), ("nvfp4", "auto"), ("fp8", "fp8")):
        rr = r.model_copy(update={"quantize": r.quantize.model_copy(update={"kv_cache": kv})})
        assert llm_api_options(rr)["kv_cache_config"]["dtype"] == want


def test_cuda_graph_sizes_never_exceed_max_batch_size() -> None:
    r = CASES["llama70b-nvfp4-b200"]
    small = r.model_copy(update={"build": r.build.model_copy(update={"max_batch_size": 12})})
    assert cuda_graph_batch_sizes(small) == [1, 2, 4, 8]
    p = small.build.pytorch.model_copy(update={"cuda_graph_batch_sizes": [32, 64]})
    none_fit = small.model_copy(update={"build": small.build.model_copy(update={"pytorch": p})})
    assert cuda_graph_batch_sizes(none_fit) == [12]


def test_unknown_key_would_fail_the_check() -> None:
    opts = {**llm_api_options(CASES["llama70b-nvfp4-b200"]), "kv_cache_free_gpu_mem_fraction": 0.9}
    with pytest.raises(AssertionError, match=r"kv_cache_free_gpu_mem_fraction"):
        check_keys(opts)
    opts = llm_api_options(CASES["llama70b-nvfp4-b200"])
    opts["cuda_graph_config"]["padding"] = True
    with pytest.raises(AssertionError, match=r"CudaGraphConfig"):
        check_keys(opts)


def test_write_options_roundtrip(tmp_path: Path) -> None:
    opts = llm_api_options(CASES["llama70b-nvfp4-b200"])
    path = tmp_path / "sub" / "llm_api_options.yaml"
    write_options(path, opts)
    assert yaml.safe_load(path.read_text()) == opts
    assert path.read_text().startswith("backend: pytorch\n")  # insertion order kept
    assert [p.name for p in path.parent.iterdir()] == ["llm_api_options.yaml"]


def test_warmup_without_tensorrt_llm_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "tensorrt_llm", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert warmup_load(tmp_path, tmp_path / "missing.yaml") is None


class _Out:
    def __init__(self) -> None:
        self.text, self.token_ids = " Paris. The", [3681, 13, 578, 6864]


def fake_trtllm(calls: dict[str, Any], *, tokens: int = 4) -> types.ModuleType:
    mod = types.ModuleType("tensorrt_llm")
    mod.__version__ = "1.2.0"  # type: ignore[attr-defined]

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            calls["init"] = kwargs

        def generate(self, prompts: list[str], params: Any) -> list[Any]:
            calls["generate"] = (prompts, params)
            out = _Out()
            out.token_ids = out.token_ids[:tokens]
            return [types.SimpleNamespace(outputs=[out])]

        def shutdown(self) -> None:
            calls["shutdown"] = True

    mod.LLM = LLM  # type: ignore[attr-defined]
    mod.SamplingParams = lambda **kw: kw  # type: ignore[attr-defined]
    return mod


def install(monkeypatch: pytest.MonkeyPatch, mod: types.ModuleType) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", mod)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())


def test_warmup_loads_with_the_written_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}
    install(monkeypatch, fake_trtllm(calls))
    opts = llm_api_options(CASES["llama70b-nvfp4-b200"])
    write_options(tmp_path / "opts.yaml", opts)
    facts = warmup_load(tmp_path / "bundle", tmp_path / "opts.yaml")
    assert calls["init"] == {"model": str(tmp_path / "bundle"), **opts}
    assert calls["generate"][1] == {"max_tokens": 4}
    assert calls["shutdown"] is True
    assert facts is not None and facts["tokens"] == 4 and facts["tensorrt_llm"] == "1.2.0"
    json.dumps(facts)  # crosses the executor boundary as JSON


def test_warmup_with_no_tokens_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}
    install(monkeypatch, fake_trtllm(calls, tokens=0))
    write_options(tmp_path / "opts.yaml", {"backend": "pytorch"})
    with pytest.raises(StageError, match=r"returned no tokens"):
        warmup_load(tmp_path, tmp_path / "opts.yaml")
    assert calls["shutdown"] is True


def test_warmup_load_failure_is_a_stage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = fake_trtllm({})

    def boom(**kwargs: Any) -> None:
        raise ValueError("Field kv_cache_confg: extra inputs are not permitted")

    mod.LLM = boom  # type: ignore[attr-defined]
    install(monkeypatch, mod)
    write_options(tmp_path / "opts.yaml", {"kv_cache_confg": {}})
    with pytest.raises(StageError, match=r"could not load .*extra inputs are not permitted"):
        warmup_load(tmp_path, tmp_path / "opts.yaml")
