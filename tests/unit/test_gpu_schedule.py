"""GPU scheduling inside a run: exports the baseline needs, vLLM parallelism, one server at a time,
and the version-switch strategy (issue 15, defects 3, 4, 5 and the switch plan)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench.vllm_server import VllmServer
from pipeline.gpu import schedule
from pipeline.gpu.sizing import GiB, recipe_size
from pipeline.recipe.load import load_recipe
from pipeline.stages.quantize import exports_for
from pipeline.stages.throughput import ThroughputStage

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def loaded(name: str, **overrides: Any) -> Any:
    lr = load_recipe(RECIPES / f"{name}.yaml")
    if overrides:
        lr.recipe = lr.recipe.model_copy(update=overrides)
    return lr


def test_tensorrt_recipe_with_a_quantized_vllm_baseline_exports_the_unified_checkpoint() -> None:
    # defect 3: throughput reads quantize.outputs["unified"] for checkpoint: quantized; quantize
    # exported only "trtllm" for the tensorrt backend (KeyError in every hopper tensorrt recipe)
    lr = loaded("llama70b")
    assert lr.recipe.gates.throughput.baseline.checkpoint == "quantized"
    assert exports_for(lr) == {"trtllm", "unified"}


def test_sizes_of_llama70b() -> None:
    lr = loaded("llama70b")
    src, where = recipe_size(lr.recipe, lr.path.parent, quantized=False)
    q, _ = recipe_size(lr.recipe, lr.path.parent, quantized=True)
    assert src is not None and q is not None and "known_models" in where
    assert 130 < src.weight_bytes / GiB < 133  # 70.6B parameters in bf16
    assert 66 < q.weight_bytes / GiB < 68  # FP8 linear layers, bf16 embeddings and lm_head
    assert src.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 and q.kv_bytes_per_token == 2 * 80 * 8 * 128


def test_vllm_baseline_of_a_70b_source_gets_tensor_parallel_2() -> None:
    # defect 4: the bf16 70B source (~141 GB) on one 80 GB GPU runs out of memory
    lr = loaded("llama70b")
    size, _ = recipe_size(lr.recipe, lr.path.parent, quantized=False)
    got = schedule.vllm_gpu(lr.recipe, size)
    assert got.tensor_parallel == 2 and got.problem is None
    argv = VllmServer(python="python3", model_dir=Path("m"), gpu_args=got.args()).argv()
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"


def test_vllm_baseline_parallelism_never_below_the_candidates_and_refused_beyond_the_runner() -> None:
    lr = loaded("llama70b")
    q, _ = recipe_size(lr.recipe, lr.path.parent, quantized=True)
    assert schedule.vllm_gpu(lr.recipe, q).tensor_parallel == 2  # FP8 fits one GPU; same GPUs as the candidate
    one = lr.recipe.model_copy(update={"target": lr.recipe.target.model_copy(update={"tensor_parallel": 1})})
    src, _ = recipe_size(one, lr.path.parent, quantized=False)
    got = schedule.vllm_gpu(one, src)
    assert got.tensor_parallel == 2 and got.problem and "runner has 1 GPU" in got.problem


def test_cpu_recipes_pass_no_gpu_flags_to_vllm_cpu() -> None:
    lr = loaded("smollm2-cpu")
    assert schedule.vllm_gpu(lr.recipe, None).args() == []
    assert schedule.throughput_servers(lr.recipe, lr.path.parent).schedule == "together"


@pytest.mark.parametrize("name", ["llama70b", "llama8b-fp8", "llama70b-nvfp4-b200"])
def test_gpu_recipes_run_the_throughput_servers_one_after_the_other(name: str) -> None:
    # defect 5: vLLM (0.92 of each GPU) and trtllm-serve (0.9 of what is free) cannot share a GPU
    lr = loaded(name)
    servers = schedule.throughput_servers(lr.recipe, lr.path.parent)
    assert servers.schedule == "sequential" and not servers.problems
    assert servers.candidate and servers.baseline
    gpu = schedule.gpu_memory_gib(lr.recipe)
    assert servers.candidate.gpu_memory_gib + servers.baseline.gpu_memory_gib > gpu  # why: they would not fit


def test_together_on_gpus_is_refused_when_the_two_servers_do_not_fit() -> None:
    lr = loaded("llama70b")
    r = lr.recipe
    r = r.model_copy(update={"gates": r.gates.model_copy(update={"throughput": r.gates.throughput.model_copy(
        update={"schedule": "together"})})})
    servers = schedule.throughput_servers(r, lr.path.parent)
    assert any("exceed" in p for p in servers.problems)


class _Recorder(ThroughputStage):
    """The stage's schedule with servers replaced by markers: what is up while each side is measured."""

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.seen: list[tuple[str, frozenset[str]]] = []

    @contextlib.contextmanager
    def _side(self, side: str) -> Iterator[str]:
        self.up.add(side)
        try:
            yield side
        finally:
            self.up.discard(side)

    def _baseline(self, ctx: Any, source: Path, gpu_args: list[str]) -> Any:
        return self._side("baseline")

    def _candidate(self, ctx: Any, kind: str, source: Path) -> Any:
        return self._side("candidate")

    def _sweep(self, ctx: Any, sides: list[tuple[str, Any]], prompts: dict[str, Any]) -> Any:
        for side, _ in sides:
            self.seen.append((side, frozenset(self.up)))
        return {s: {} for s, _ in sides}, {s: {} for s, _ in sides}


def test_sequential_schedule_never_has_both_servers_up() -> None:
    stage = _Recorder()
    medians, _ = stage._measure(None, "trtllm-serve", Path("src"), "sequential", [], {})
    assert set(medians) == {"baseline", "candidate"}
    assert stage.seen == [("baseline", frozenset({"baseline"})), ("candidate", frozenset({"candidate"}))]
    stage = _Recorder()
    stage._measure(None, "triton", Path("src"), "together", [], {})
    assert stage.seen[0][1] == {"baseline", "candidate"}


# --------------------------------------------------------------------------- switching versions
def test_a_70b_engine_cannot_switch_side_by_side_on_its_gpus() -> None:
    lr = loaded("llama70b")
    size, _ = recipe_size(lr.recipe, lr.path.parent, quantized=True)
    plan = schedule.switch_plan(lr.recipe, size)
    assert plan.strategy == "drain" and "do not fit" in plan.reason
    s3 = lr.recipe.model_copy(update={"publish": lr.recipe.publish.model_copy(
        update={"repository": "s3://models/prod"})})
    assert schedule.switch_plan(s3, size).strategy == "rolling"
    forced = lr.recipe.model_copy(update={"publish": lr.recipe.publish.model_copy(update={"switch": "side-by-side"})})
    assert schedule.switch_plan(forced, size).reason.startswith("PROBLEM")


def test_an_8b_engine_switches_side_by_side_with_a_fraction_that_fits_two() -> None:
    lr = loaded("llama8b-fp8")
    size, _ = recipe_size(lr.recipe, lr.path.parent, quantized=True)
    assert size is not None
    plan = schedule.switch_plan(lr.recipe, size)
    assert plan.strategy == "side-by-side"
    gpu = schedule.gpu_memory_gib(lr.recipe)
    # version N loaded alone with this fraction, then N+1 beside it with what is left
    first = schedule.kv_fraction_placement(size, 1, 1, gpu, plan.kv_cache_free_gpu_mem_fraction)
    second = schedule.kv_fraction_placement(size, 1, 1, gpu, plan.kv_cache_free_gpu_mem_fraction,
                                            used_gib=first.gpu_memory_gib)
    assert first.gpu_memory_gib + second.gpu_memory_gib <= gpu
    # with the default 0.9 the second copy finds no room for its weights and KV cache
    default = schedule.kv_fraction_placement(size, 1, 1, gpu, 0.9)
    assert gpu - default.gpu_memory_gib < size.weights_per_gpu_gib(1) + 1


def test_multi_gpu_engines_are_served_in_orchestrator_mode(tmp_path: Path) -> None:
    import json

    from pipeline.repository.parallel import serving_env

    def bundle(model: str, version: int, backend: str, tp: int) -> None:
        d = tmp_path / model / str(version) / "bundle"
        d.mkdir(parents=True)
        d.joinpath("manifest.json").write_text(json.dumps(
            {"backend": backend, "compatibility": {"tensor_parallel": tp, "pipeline_parallel": 1}}))

    bundle("small", 1, "tensorrt", 1)
    bundle("cpu", 1, "reference", 1)
    assert serving_env(tmp_path) == {}  # single-GPU serving stays upstream's default
    bundle("big", 3, "tensorrt", 2)
    assert serving_env(tmp_path) == {"TRTLLM_ORCHESTRATOR": "1"}


def test_quantize_gives_gpu_memory_back_after_each_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quantize stage runs in trtbuild's process; the gates' servers start later in the same run
    and need the GPU memory free, so each deleted model's cached blocks go back to the driver."""
    import torch

    from pipeline.quant import quantize

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    quantize.release_gpu_memory()
    assert calls == ["empty_cache"]
    import inspect

    src = inspect.getsource(quantize.quantize_checkpoint)
    assert src.count("del model") == src.count("release_gpu_memory()") >= 2
