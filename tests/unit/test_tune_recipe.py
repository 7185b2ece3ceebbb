"""The recipe's `tune:` section: defaults, and bad input as one line naming file:line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.recipe.load import load_recipe
from pipeline.tune.settings import default_space, describe, space_of
from tests.unit.test_recipe import CPU_RECIPE, problems, trtbuild, write


def test_defaults_give_a_search_for_the_backend(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, CPU_RECIPE + "tune: {enabled: true}\n"), env={}).recipe
    assert r.tune.enabled and r.tune.budget_s == 600
    assert [p.name for p in r.tune.profiles] == ["throughput", "latency"]
    # build.max_batch_size defaults to 64
    assert space_of(r) == default_space(r) == {"max_batch_size": [1, 2, 4, 8, 16, 32, 64], "instances": [1, 2]}
    assert "14 points" in describe(r)[0]


@pytest.mark.parametrize(("tune", "line", "field", "fix"), [
    ("tune:\n  space:\n    kv_cache_free_gpu_memory_fraction: [0.5]\n", 12,
     "tune.space.kv_cache_free_gpu_memory_fraction", "backend 'reference' has no runtime setting"),
    ("tune:\n  space:\n    max_batch_size: [4, 128]\n", 12, "tune.space.max_batch_size[1]",
     "outside 1..64 (build.max_batch_size"),
    ("tune:\n  space:\n    max_batch_size: [2.5]\n", 12, "tune.space.max_batch_size[0]", "takes an integer"),
    ("tune:\n  space:\n    max_batch_sizes: [2]\n", 12, "tune.space.max_batch_sizes.[key]", "Input should be"),
    ("tune:\n  budget_s: 0\n", 11, "tune.budget_s", "greater than 0"),
    ("tune:\n  objective:\n    workloads: [nope]\n", 12, "tune.objective.workloads[0]", "unknown workload 'nope'"),
    ("tune:\n  default_profile: fast\n", 10, "tune", "default_profile 'fast' is not one of the profiles"),
])
def test_bad_tune_fields_one_line(tmp_path: Path, tune: str, line: int, field: str, fix: str) -> None:
    p = write(tmp_path, CPU_RECIPE + tune)
    got = problems(p)
    assert len(got) == 1, got
    assert got[0].startswith(f"{p}:{line}: {field}: "), got[0]
    assert fix in got[0]
    assert "\n" not in got[0]


def test_cli_validate_tune_error_exit_1_no_traceback(tmp_path: Path) -> None:
    p = write(tmp_path, CPU_RECIPE + "tune:\n  space:\n    threads: [-1]\n")
    out = trtbuild("validate", str(p))
    assert out.returncode == 1
    assert "tune.space.threads[0]" in out.stderr and "Traceback" not in out.stderr


def test_plan_explain_lists_the_search_space(tmp_path: Path) -> None:
    from pipeline.explain.report import explain
    from tests.conftest import ROOT

    for name, want in (("smollm2-cpu", "max_batch_size: [2, 16] (default 16"),
                       ("llama8b-fp8", "enable_chunked_context: [True, False]")):
        ex = explain(load_recipe(ROOT / "recipes" / f"{name}.yaml", env={"PWD": "/w"}), artifacts=tmp_path)
        tune = next(s for s in ex.stages if s.name == "tune")
        assert any(want in n for n in tune.notes), tune.notes
        if name == "smollm2-cpu":  # enabled: the private tritonserver the trials load points into
            assert tune.processes[0].role == "tritonserver (tune)"
