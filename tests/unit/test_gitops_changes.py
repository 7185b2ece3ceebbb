"""`plan --changed-since REF`: the recipes a commit range changes, on a real git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import GitOpsError
from pipeline.gitops.changes import plan_changes, runner_label
from tests.conftest import ROOT


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding the shipped recipes and bases, one commit tagged `start`."""
    r = tmp_path / "repo"
    shutil.copytree(ROOT / "recipes", r / "recipes")
    (r / "README.md").write_text("recipes\n")
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "start")
    git(r, "tag", "start")
    return r


def commit(repo: Path, msg: str = "change") -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", msg)


def trtbuild(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", *args], cwd=repo, env=env,
                          capture_output=True, text=True, check=False)


def planned(repo: Path, ref: str = "start") -> list[str]:
    return [p.recipe for p in plan_changes(ref, cwd=repo).planned]


def test_recipe_edit_plans_that_recipe_and_its_children(repo: Path) -> None:
    p = repo / "recipes" / "smollm2-cpu.yaml"
    p.write_text(p.read_text().replace("samples: 32\n", "samples: 64\n", 1))
    commit(repo)
    res = trtbuild(repo, "plan", "--changed-since", "start", "--format", "github-matrix")
    assert res.returncode == 0, res.stderr
    matrix = json.loads(res.stdout)
    # smollm2-cpu-lm-eval extends smollm2-cpu, so it is planned too
    assert matrix == {"include": [
        {"recipe": "recipes/smollm2-cpu-lm-eval.yaml", "name": "smollm2-cpu-lm-eval", "gpu": "cpu", "runner": "cpu",
         "tp": 1, "pp": 1},
        {"recipe": "recipes/smollm2-cpu.yaml", "name": "smollm2-cpu", "gpu": "cpu", "runner": "cpu", "tp": 1,
         "pp": 1}]}


# every recipe that extends base/hopper-trtllm.yaml, sorted as the plan lists them
HOPPER_CHILDREN = ["recipes/llama70b-nvfp4-b200.yaml", "recipes/llama70b.yaml", "recipes/llama8b-fp8.yaml",
                   "recipes/mistral-7b.yaml", "recipes/qwen2.5-7b.yaml"]


def test_base_edit_plans_every_child_transitively(repo: Path) -> None:
    hopper = repo / "recipes" / "base" / "hopper-trtllm.yaml"
    hopper.write_text(hopper.read_text().replace("samples: 512", "samples: 1024"))
    commit(repo, "hopper base")
    assert planned(repo) == HOPPER_CHILDREN
    git(repo, "tag", "after-hopper")

    common = repo / "recipes" / "base" / "common.yaml"
    common.write_text(common.read_text().replace("keep_versions: 3", "keep_versions: 4"))
    commit(repo, "common base")
    # common.yaml is extended by smollm2-cpu directly and by the others through hopper-trtllm.yaml
    assert planned(repo, "after-hopper") == [*HOPPER_CHILDREN, "recipes/smollm2-cpu-lm-eval.yaml",
                                             "recipes/smollm2-cpu.yaml"]
    plan = plan_changes("after-hopper", cwd=repo)
    by = {p.name: p for p in plan.planned}
    assert by["llama70b"].runner == "h100-x2" and by["llama70b"].tensor_parallel == 2
    assert by["llama70b-nvfp4-b200"].gpu == "b200" and by["llama8b-fp8"].runner == "h100"
    assert by["smollm2-cpu"].because == ["recipes/base/common.yaml (modified)"]


def test_rename_plans_the_new_path_and_removes_nothing(repo: Path) -> None:
    git(repo, "mv", "recipes/llama8b-fp8.yaml", "recipes/llama8b.yaml")
    commit(repo, "rename")
    plan = plan_changes("start", cwd=repo)
    assert [p.recipe for p in plan.planned] == ["recipes/llama8b.yaml"]
    assert plan.planned[0].because == ["recipes/llama8b.yaml (renamed from recipes/llama8b-fp8.yaml)"]
    assert plan.removed == []


def test_renamed_base_plans_its_children(repo: Path) -> None:
    git(repo, "mv", "recipes/base/hopper-trtllm.yaml", "recipes/base/hopper.yaml")
    for child in HOPPER_CHILDREN:
        p = repo / child
        p.write_text(p.read_text().replace("base/hopper-trtllm.yaml", "base/hopper.yaml"))
    commit(repo, "rename base")
    assert planned(repo) == HOPPER_CHILDREN


def test_no_change_is_an_empty_matrix(repo: Path) -> None:
    (repo / "README.md").write_text("only docs changed\n")
    commit(repo, "docs")
    res = trtbuild(repo, "plan", "--changed-since", "start", "--format", "github-matrix")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"include": []}
    assert "nothing to build" in res.stderr


def test_deleted_recipe_is_reported_not_planned(repo: Path) -> None:
    git(repo, "rm", "-q", "recipes/llama70b.yaml")
    commit(repo, "drop 70b")
    res = trtbuild(repo, "plan", "--changed-since", "start", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["planned"] == [] and out["removed"] == ["recipes/llama70b.yaml"]
    assert out["matrix"] == {"include": []}
    assert "removed recipes/llama70b.yaml" in res.stderr


def test_deleted_base_is_a_problem_naming_the_child(repo: Path) -> None:
    git(repo, "rm", "-q", "recipes/base/hopper-trtllm.yaml")
    commit(repo, "drop base")
    res = trtbuild(repo, "plan", "--changed-since", "start", "--format", "github-matrix")
    assert res.returncode == 1 and res.stdout == ""
    assert "recipes/llama70b.yaml:6: extends: base recipe recipes/base/hopper-trtllm.yaml not found" in res.stderr


def test_bad_ref_is_one_line(repo: Path) -> None:
    res = trtbuild(repo, "plan", "--changed-since", "no-such-branch", "--format", "github-matrix")
    assert res.returncode == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-branch" in lines[0] and "fetch-depth" in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    with pytest.raises(GitOpsError, match="not a git ref"):
        plan_changes("--output=/tmp/x", cwd=repo)  # never passed to git as an option


def test_plan_needs_a_recipe_or_a_ref(repo: Path) -> None:
    res = trtbuild(repo, "plan")
    assert res.returncode == 2 and "--changed-since" in res.stderr


def test_runner_label() -> None:
    assert runner_label("h100", 1) == "h100" and runner_label("h100", 8) == "h100-x8"
