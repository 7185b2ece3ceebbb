"""tensorrt backend: trtllm-build argv against the recorded 1.2 flag list, engine dirs, stand-in build."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import struct
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipeline import upstream
from pipeline.backends.tensorrt import build_engine, read_engine_config, trtllm_build_argv
from pipeline.errors import ExecutorError, StageError
from pipeline.recipe.load import load_recipe
from pipeline.recipe.schema import Executor, Recipe
from pipeline.runner.executor import command_argv
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data" / "trtllm"
STANDIN = DATA / "trtllm-build"
FLAGS_DOC = json.loads((ROOT / "tests" / "data" / "upstream" / "trtllm_build.json").read_text())
FLAGS: dict[str, dict[str, Any]] = FLAGS_DOC["flags"]
RECIPES = {p.stem: load_recipe(p, env={"PWD": "/w"}).recipe for p in sorted((ROOT / "recipes").glob("*.yaml"))}
TENSORRT = sorted(name for name, r in RECIPES.items() if r.build.backend == "tensorrt")
PATHS = {"checkpoint_dir": Path("/w/ckpt"), "output_dir": Path("/w/engine"),
         "timing_cache": Path("/w/artifacts/cache/trt_timing.cache")}


def standin() -> ModuleType:
    """The stand-in script as a module (it has no .py suffix)."""
    loader = SourceFileLoader("trtllm_build_standin", str(STANDIN))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def variant(recipe: Recipe, *, build: dict[str, Any] | None = None, tensorrt: dict[str, Any] | None = None,
            target: dict[str, Any] | None = None, quantize: dict[str, Any] | None = None) -> Recipe:
    b = recipe.build
    b = b.model_copy(update={**(build or {}), "tensorrt": b.tensorrt.model_copy(update=tensorrt or {})})
    return recipe.model_copy(update={
        "build": b,
        "target": recipe.target.model_copy(update=target or {}),
        "quantize": recipe.quantize.model_copy(update=quantize or {}),
    })


def parse(argv: list[str]) -> dict[str, str | None]:
    """Independent strict reading of an argv against the recorded list: flag -> value."""
    aliases = {a: f for f, spec in FLAGS.items() for a in spec.get("aliases", [])}
    seen: dict[str, str | None] = {}
    it = iter(argv[1:])
    for tok in it:
        flag = aliases.get(tok, tok)
        assert flag in FLAGS, f"{tok} is not a trtllm-build 1.2 flag"
        assert flag not in seen, f"{flag} given twice"
        spec = FLAGS[flag]
        if spec["kind"] == "store_true":
            seen[flag] = None
            continue
        value = next(it, None)
        assert value is not None and not value.startswith("--"), f"{flag} needs a value"
        if spec["kind"] == "int":
            assert value.isdigit(), f"{flag} {value!r} is not an int"
        elif spec["kind"] in ("choice", "plugin_bool", "plugin_dtype"):
            assert value in spec["choices"], f"{flag} {value!r} not in {spec['choices']}"
        seen[flag] = value
    return seen


# --------------------------------------------------------------------------- recorded interface
def test_flag_list_is_recorded_with_its_source() -> None:
    for spec in FLAGS.values():  # each flag names where it was read
        assert spec["repo"] == "NVIDIA/TensorRT-LLM" and len(spec["commit"]) == 40 and spec["line"] > 0
    # what FACTS.md lists for 1.2 is all there
    for flag in ("--checkpoint_dir", "--output_dir", "--max_batch_size", "--max_input_len", "--max_seq_len",
                 "--max_beam_width", "--max_num_tokens", "--opt_num_tokens", "--kv_cache_type", "--gemm_plugin",
                 "--gpt_attention_plugin", "--use_paged_context_fmha", "--use_fp8_context_fmha",
                 "--multiple_profiles", "--tokens_per_block", "--workers", "--input_timing_cache",
                 "--output_timing_cache", "--strip_plan", "--fast_build"):
        assert flag in FLAGS
    # TP/PP are fixed at checkpoint conversion: no such build flags
    assert not {"--tp_size", "--pp_size", "--world_size", "--auto_parallel"} & set(FLAGS)
    # plugin booleans take enable/disable, they are not store_true
    assert FLAGS["--use_paged_context_fmha"]["choices"] == ["enable", "disable"]
    assert FLAGS["--kv_cache_type"]["choices"] == ["continuous", "paged", "disabled"]


def test_tensorrt_recipes_exist() -> None:
    assert TENSORRT == ["llama70b", "llama8b-fp8", "mistral-7b", "qwen2.5-7b"]


@pytest.mark.parametrize("name", TENSORRT)
def test_argv_uses_only_recorded_flags_with_valid_values(name: str) -> None:
    recipe = RECIPES[name]
    argv = trtllm_build_argv(recipe, **PATHS)
    assert argv[0] == "trtllm-build"
    got = parse(argv)
    b = recipe.build
    assert got["--checkpoint_dir"] == "/w/ckpt" and got["--output_dir"] == "/w/engine"
    assert got["--max_batch_size"] == str(b.max_batch_size)
    assert got["--max_input_len"] == str(b.max_input_len or b.max_seq_len)
    assert got["--max_seq_len"] == str(b.max_seq_len)
    assert got["--max_num_tokens"] == str(b.max_num_tokens)
    assert got["--kv_cache_type"] == "paged"
    assert got["--workers"] == str(recipe.target.world_size)
    assert got["--input_timing_cache"] == got["--output_timing_cache"] == str(PATHS["timing_cache"])
    # and the stand-in's argparse (built from the same list, allow_abbrev off) accepts it too
    ns = standin().build_parser(FLAGS).parse_args(argv[1:])
    assert ns.use_paged_context_fmha == "enable" and ns.multiple_profiles == "enable"
    assert upstream.check_argv("trtllm-build", argv[1:]) == []  # what `plan --explain` reports


def test_unknown_flag_fails_the_check() -> None:
    argv = [*trtllm_build_argv(RECIPES["llama8b-fp8"], **PATHS), "--tp_size", "2"]
    with pytest.raises(AssertionError, match=r"--tp_size is not a trtllm-build 1.2 flag"):
        parse(argv)
    with pytest.raises(SystemExit) as e:
        standin().build_parser(FLAGS).parse_args(argv[1:])
    assert e.value.code == 2


def test_bad_value_fails_the_check() -> None:
    argv = trtllm_build_argv(RECIPES["llama8b-fp8"], **PATHS)
    i = argv.index("--use_paged_context_fmha")
    argv[i + 1] = "true"
    with pytest.raises(AssertionError, match=r"not in"):
        parse(argv)


def test_max_input_len_defaults_to_max_seq_len() -> None:
    r = variant(RECIPES["llama8b-fp8"], build={"max_input_len": None, "max_seq_len": 2048})
    assert parse(trtllm_build_argv(r, **PATHS))["--max_input_len"] == "2048"


@pytest.mark.parametrize(("tp", "pp", "workers"), [(1, 1, "1"), (2, 1, "2"), (2, 2, "4")])
def test_workers_is_world_size(tp: int, pp: int, workers: str) -> None:
    r = variant(RECIPES["llama8b-fp8"], target={"tensor_parallel": tp, "pipeline_parallel": pp})
    assert parse(trtllm_build_argv(r, **PATHS))["--workers"] == workers


def test_llama70b_is_tp2() -> None:
    assert parse(trtllm_build_argv(RECIPES["llama70b"], **PATHS))["--workers"] == "2"


def test_fp8_kv_enables_fp8_context_fmha() -> None:
    r = RECIPES["llama8b-fp8"]
    assert (r.quantize.algo, r.quantize.kv_cache) == ("fp8", "fp8")
    assert parse(trtllm_build_argv(r, **PATHS))["--use_fp8_context_fmha"] == "enable"


@pytest.mark.parametrize(("algo", "kv"), [("fp8", "none"), ("none", "none"), ("int4_awq", "fp8")])
def test_fp8_context_fmha_not_emitted_without_fp8_kv_and_fp8_weights(algo: str, kv: str) -> None:
    r = variant(RECIPES["llama8b-fp8"], quantize={"algo": algo, "kv_cache": kv})
    assert "--use_fp8_context_fmha" not in trtllm_build_argv(r, **PATHS)


def test_plugin_switches_follow_the_recipe() -> None:
    r = variant(RECIPES["llama8b-fp8"], tensorrt={"use_paged_context_fmha": False, "multiple_profiles": False,
                                                  "gemm_plugin": "disable", "tokens_per_block": 64,
                                                  "max_beam_width": 4})
    got = parse(trtllm_build_argv(r, **PATHS))
    assert got["--use_paged_context_fmha"] == got["--multiple_profiles"] == "disable"
    assert got["--gemm_plugin"] == "disable"
    assert (got["--tokens_per_block"], got["--max_beam_width"]) == ("64", "4")


@pytest.mark.parametrize("gemm", ["auto", "float16", "bfloat16", "fp8", "disable"])
def test_every_schema_gemm_plugin_value_is_a_1_2_choice(gemm: str) -> None:
    assert gemm in FLAGS["--gemm_plugin"]["choices"]
    r = variant(RECIPES["llama8b-fp8"], tensorrt={"gemm_plugin": gemm})
    assert parse(trtllm_build_argv(r, **PATHS))["--gemm_plugin"] == gemm


def test_fp8_gemm_plugin_needs_fp8_weights() -> None:
    r = variant(RECIPES["llama8b-fp8"], tensorrt={"gemm_plugin": "fp8"}, quantize={"algo": "int4_awq"})
    with pytest.raises(StageError, match=r"gemm_plugin 'fp8'.*quantize.algo is 'int4_awq'"):
        trtllm_build_argv(r, **PATHS)


def test_argv_refuses_other_backends() -> None:
    with pytest.raises(StageError, match=r"is for backend 'tensorrt'.*uses 'pytorch'"):
        trtllm_build_argv(RECIPES["llama70b-nvfp4-b200"], **PATHS)


# --------------------------------------------------------------------------- stand-in build
def safetensors(path: Path) -> None:
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def fake_checkpoint(root: Path, *, tp: int = 2, pp: int = 1, quant: str | None = "FP8",
                    kv: str | None = "FP8", shards: int | None = None) -> Path:
    ckpt = root / "trtllm_ckpt"
    ckpt.mkdir()
    world = tp * pp
    (ckpt / "config.json").write_text(json.dumps({
        "architecture": "LlamaForCausalLM", "dtype": "bfloat16", "num_hidden_layers": 2,
        "hidden_size": 64, "vocab_size": 128, "max_position_embeddings": 4096,
        "mapping": {"world_size": world, "tp_size": tp, "pp_size": pp},
        "quantization": {"quant_algo": quant, "kv_cache_quant_algo": kv},
    }))
    for rank in range(world if shards is None else shards):
        safetensors(ckpt / f"rank{rank}.safetensors")
    return ckpt


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{DATA}{os.pathsep}{os.environ.get('PATH', '')}")


def tp2_recipe() -> Recipe:
    r = RECIPES["llama70b"]
    assert r.target.tensor_parallel == 2
    return variant(r, tensorrt={"executor": Executor()})


def test_build_with_standin_returns_engine_facts(tmp_path: Path, on_path: None) -> None:
    ckpt = fake_checkpoint(tmp_path)
    cache = tmp_path / "cache" / "trt_timing.cache"
    facts = build_engine(tp2_recipe(), checkpoint_dir=ckpt, output_dir=tmp_path / "engine",
                         timing_cache=cache, log=tmp_path / "build.log")
    assert facts["tensorrt_llm"] == "1.2.0"
    assert (facts["architecture"], facts["dtype"]) == ("LlamaForCausalLM", "bfloat16")
    assert (facts["quant_algo"], facts["kv_cache_quant_algo"]) == ("FP8", "FP8")
    assert (facts["tp_size"], facts["pp_size"], facts["world_size"]) == (2, 1, 2)
    assert (facts["max_batch_size"], facts["max_seq_len"], facts["max_num_tokens"]) == (64, 8192, 8192)
    assert facts["max_input_len"] == 4096 and facts["kv_cache_type"] == "PAGED"
    assert facts["plugins"]["use_fp8_context_fmha"] is True
    assert facts["plugins"]["use_paged_context_fmha"] is True
    assert facts["plugins"]["tokens_per_block"] == 32 and facts["plugins"]["gemm_plugin"] == "auto"
    assert facts["engines"] == ["rank0.engine", "rank1.engine"]
    assert cache.is_file()
    assert read_engine_config(tmp_path / "engine") == facts
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_build_through_a_venv_executor(tmp_path: Path) -> None:
    """kind subprocess: the console script beside the other interpreter is the one that runs."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    (venv_bin / "trtllm-build").symlink_to(STANDIN)
    ex = Executor(kind="subprocess", python=str(venv_bin / "python"))
    assert command_argv(["trtllm-build", "--x"], ex)[0] == str(venv_bin / "trtllm-build")
    r = variant(tp2_recipe(), tensorrt={"executor": ex})
    facts = build_engine(r, checkpoint_dir=fake_checkpoint(tmp_path), output_dir=tmp_path / "engine",
                         timing_cache=tmp_path / "t.cache", log=tmp_path / "build.log")
    assert facts["engines"] == ["rank0.engine", "rank1.engine"]


def test_missing_rank_engine_is_refused(tmp_path: Path, on_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTLLM_STANDIN_SKIP_RANK", "1")
    with pytest.raises(StageError, match=r"world_size 2 \(tp 2 x pp 1\).*missing or empty: rank1.engine"):
        build_engine(tp2_recipe(), checkpoint_dir=fake_checkpoint(tmp_path), output_dir=tmp_path / "engine",
                     timing_cache=tmp_path / "t.cache", log=tmp_path / "build.log")
    assert not (tmp_path / "engine").exists()  # nothing half-built under the final name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_read_engine_config_refuses_a_missing_rank_engine(tmp_path: Path, on_path: None) -> None:
    build_engine(tp2_recipe(), checkpoint_dir=fake_checkpoint(tmp_path), output_dir=tmp_path / "engine",
                 timing_cache=tmp_path / "t.cache", log=tmp_path / "build.log")
    (tmp_path / "engine" / "rank0.engine").unlink()
    with pytest.raises(StageError, match=r"stage 'build'.*missing or empty: rank0.engine"):
        read_engine_config(tmp_path / "engine")


def test_read_engine_config_refuses_leftover_and_empty_engines(tmp_path: Path, on_path: None) -> None:
    build_engine(tp2_recipe(), checkpoint_dir=fake_checkpoint(tmp_path), output_dir=tmp_path / "engine",
                 timing_cache=tmp_path / "t.cache", log=tmp_path / "build.log")
    (tmp_path / "engine" / "rank2.engine").write_bytes(b"x")
    with pytest.raises(StageError, match=r"rank2.engine do not belong"):
        read_engine_config(tmp_path / "engine")
    (tmp_path / "engine" / "rank2.engine").unlink()
    (tmp_path / "engine" / "rank1.engine").write_bytes(b"")
    with pytest.raises(StageError, match=r"missing or empty: rank1.engine"):
        read_engine_config(tmp_path / "engine")


def test_read_engine_config_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "rank0.engine").write_bytes(b"x")
    with pytest.raises(StageError, match=r"no config.json; not a TensorRT-LLM engine directory"):
        read_engine_config(tmp_path)


def test_checkpoint_config_is_not_an_engine(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path)
    with pytest.raises(StageError, match=r"missing version, pretrained_config, build_config"):
        read_engine_config(ckpt)


def test_checkpoint_mapping_must_match_target(tmp_path: Path, on_path: None) -> None:
    with pytest.raises(StageError, match=r"checkpoint is tp 1 x pp 1, recipe target is tp 2 x pp 1") as e:
        build_engine(tp2_recipe(), checkpoint_dir=fake_checkpoint(tmp_path, tp=1),
                     output_dir=tmp_path / "engine", timing_cache=tmp_path / "t.cache", log=tmp_path / "log")
    assert "fixed when the checkpoint is converted" in e.value.one_line()
    assert not (tmp_path / "log").exists()  # refused before spending GPU time


def test_checkpoint_missing_a_shard_is_refused(tmp_path: Path, on_path: None) -> None:
    with pytest.raises(StageError, match=r"lacks rank1.safetensors"):
        build_engine(tp2_recipe(), checkpoint_dir=fake_checkpoint(tmp_path, shards=1),
                     output_dir=tmp_path / "engine", timing_cache=tmp_path / "t.cache", log=tmp_path / "log")


def test_standin_checks_the_checkpoint_itself(tmp_path: Path, on_path: None) -> None:
    ckpt = fake_checkpoint(tmp_path, shards=1)
    argv = trtllm_build_argv(tp2_recipe(), checkpoint_dir=ckpt, output_dir=tmp_path / "e",
                             timing_cache=tmp_path / "t.cache")
    from pipeline.runner.executor import run_command

    with pytest.raises(ExecutorError, match=r"exited with code 1: .*rank1.safetensors not found"):
        run_command(argv, executor=Executor(), log=tmp_path / "log")


def test_engine_quantization_must_match_recipe(tmp_path: Path, on_path: None) -> None:
    with pytest.raises(StageError, match=r"kv_cache_quant_algo None \(recipe wants 'FP8'\)"):
        build_engine(tp2_recipe(), checkpoint_dir=fake_checkpoint(tmp_path, kv=None),
                     output_dir=tmp_path / "engine", timing_cache=tmp_path / "t.cache", log=tmp_path / "log")
    assert not (tmp_path / "engine").exists()


def test_engine_from_another_trtllm_line_is_refused(tmp_path: Path, on_path: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTLLM_STANDIN_VERSION", "1.1.0")
    with pytest.raises(StageError, match=r"built by TensorRT-LLM 1.1.0.*1.2.x line only"):
        build_engine(tp2_recipe(), checkpoint_dir=fake_checkpoint(tmp_path), output_dir=tmp_path / "engine",
                     timing_cache=tmp_path / "t.cache", log=tmp_path / "log")


def test_fp8_context_fmha_is_dropped_by_the_builder_without_fp8_weights(tmp_path: Path, on_path: None) -> None:
    """The stand-in mirrors builder.build(): the engine records what was really used."""
    r = variant(tp2_recipe(), quantize={"algo": "int4_awq", "kv_cache": "fp8"})
    facts = build_engine(r, checkpoint_dir=fake_checkpoint(tmp_path, quant="W4A16_AWQ"),
                         output_dir=tmp_path / "engine", timing_cache=tmp_path / "t.cache", log=tmp_path / "log")
    assert facts["quant_algo"] == "W4A16_AWQ" and facts["plugins"]["use_fp8_context_fmha"] is False


def test_standin_parser_matches_argparse_semantics() -> None:
    p = standin().build_parser(FLAGS)
    assert isinstance(p, argparse.ArgumentParser)
    ns = p.parse_args(["--max_decoder_seq_len", "77", "--strip_plan"])
    assert ns.max_seq_len == 77 and ns.strip_plan is True and ns.gemm_plugin is None
    with pytest.raises(SystemExit):
        p.parse_args(["--max_batch", "8"])  # no prefix matching
