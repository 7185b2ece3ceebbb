"""`trtbuild run --local` on the real stages, end to end, as a new user meets it.

The local services (SeaweedFS, `mlflow server`, tritonserver) are started by the command; the
recipe names no store, registry or repository, so everything goes where `local up` says. A
tiny model keeps it fast; the throughput gate (vLLM) has its own tests and is disabled here.

Then the run is killed with SIGKILL as each stage starts, and re-run each time: every stage that
had finished is skipped, and the last run finishes the job and serves the model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.tiny_model import save_tiny_checkpoint

# longer than the 600 s default (pyproject.toml): several trtbuild runs of up to 600 s each in one test
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
CLI = [sys.executable, "-m", "pipeline.cli.__main__"]


def write_recipe(d: Path) -> Path:
    save_tiny_checkpoint(d / "src", peaky=4.0)
    recipe = {
        "name": "tiny-local", "extends": str(ROOT / "recipes/base/common.yaml"),
        "source": {"path": "src", "dtype": "float32"}, "target": {"gpu": "cpu"},
        "quantize": {"algo": "fp8", "kv_cache": "fp8", "calibration": {"samples": 4, "seq_len": 32}},
        "build": {"backend": "reference", "max_batch_size": 4, "max_seq_len": 256, "max_num_tokens": 512},
        "gates": {
            # a random tiny model: loose bounds, but the gate runs and reports every check
            "accuracy": {"text_samples": 4, "text_seq_len": 32, "max_ppl_ratio": 1.5, "min_top1_agreement": 0.5,
                         "max_kl": 1.0, "max_accuracy_drop": 100,
                         "tasks": [{"name": "copy", "kind": "exact-match", "data": "builtin:copy", "limit": 4}]},
            "throughput": {"enabled": False},
        },
        "release": {"model_name": "tiny-local"},
        "publish": {"model_name": "tiny", "smoke_prompt": "The"},
    }
    path = d / "tiny-local.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("local-run")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "TRTBUILD_STORE", "TRTBUILD_TRITON"))}
    env["TRTBUILD_TRITON_REPO"] = str(d / "repo")
    ctx = {"dir": d, "recipe": write_recipe(d), "artifacts": d / "artifacts", "env": env}
    try:
        yield ctx
    finally:
        subprocess.run([*CLI, "local", "down", "--root", str(d / "artifacts" / "local")], cwd=ROOT, env=env,
                       capture_output=True, timeout=120, check=False)


def run_cli(ctx: dict[str, Any], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=ctx["dir"], env=ctx["env"], capture_output=True, text=True,
                          timeout=timeout, check=False)


def run_and_kill_at(ctx: dict[str, Any], stage: str, timeout: float = 600) -> list[str]:
    """Start `run --local`, SIGKILL its whole process group when `stage` starts; its stderr lines."""
    proc = subprocess.Popen([*CLI, "run", str(ctx["recipe"]), "--local", "--artifacts", str(ctx["artifacts"])],
                            cwd=ctx["dir"], env=ctx["env"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            lines.append(line.rstrip())
            if line.startswith(f"▶ {stage}"):
                time.sleep(0.3)  # inside the stage, not at its first line
                os.killpg(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, f"stage {stage} never started:\n" + "\n".join(lines[-20:])
        else:
            raise AssertionError(f"run ended before {stage} started:\n" + "\n".join(lines[-30:]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return lines


def test_killed_at_every_stage_then_finished_without_redoing_work(setup: dict[str, Any]) -> None:
    order = ["fetch", "quantize", "build", "accuracy", "release", "publish"]
    for i, stage in enumerate(order):
        lines = run_and_kill_at(setup, stage)
        # the stage killed last time may have finished before the kill landed; those before it had
        for earlier in order[:max(i - 1, 0)]:
            assert any(ln.startswith(f"✓ {earlier} skipped") for ln in lines), (earlier, lines[-30:])
    r = run_cli(setup, "run", str(setup["recipe"]), "--local", "--json", "--artifacts", str(setup["artifacts"]))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    status = {s["name"]: s["status"] for s in summary["stages"]}
    assert status == {"fetch": "skipped", "quantize": "skipped", "build": "skipped", "tune": "skipped",
                      "accuracy": "skipped",
                      "throughput": "skipped", "release": "skipped", "publish": "done"}
    setup["summary"] = summary
    setup["stderr"] = r.stderr


def test_the_end_of_the_run_shows_gates_release_served_generation_and_next_steps(setup: dict[str, Any]) -> None:
    if "summary" not in setup:
        pytest.skip("needs the finished run of the test above")
    fin = setup["summary"]["finale"]
    checks = {row["check"] for row in fin["gates"]}
    assert {"perplexity ratio", "top-1 agreement", "mean KL (nats/token)"} <= checks
    assert all(row["gate"] == "accuracy" and isinstance(row["passed"], bool) for row in fin["gates"])
    rel = fin["release"]
    assert rel["version"] == 1 and rel["alias"] == "candidate"
    assert rel["store_uri"].startswith("s3://trtbuild-bundles/bundles/")  # SeaweedFS, not a file store
    assert fin["publish"]["version"] == 1
    gen = fin["generation"]
    assert "error" not in gen and gen["version"] == 1 and gen["text"].strip()
    assert any(c.startswith("trtbuild promote tiny-local --version 1") for c in fin["next"])
    assert "trtbuild local down" in fin["next"]
    env_file = setup["artifacts"] / "local" / "local.env"
    assert env_file.stat().st_mode & 0o077 == 0  # keys inside: private
    # the printed commands work with the environment the run printed
    env = {**setup["env"], **_parse_env(env_file)}
    listed = subprocess.run([*CLI, "list", "tiny-local", "--json"], cwd=setup["dir"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr[-2000:]
    versions = json.loads(listed.stdout)["versions"]
    assert [v["version"] for v in versions] == [1] and "candidate" in versions[0]["aliases"]
    assert versions[0]["deployed"] == f"{setup['dir'] / 'repo'}/tiny@v1"  # publish recorded where it serves
    # the secret key never reaches the human output
    assert env["AWS_SECRET_ACCESS_KEY"] not in setup["stderr"]


def test_a_noop_rerun_skips_everything_and_still_serves(setup: dict[str, Any]) -> None:
    if "summary" not in setup:
        pytest.skip("needs the finished run of the test above")
    r = run_cli(setup, "run", str(setup["recipe"]), "--local", "--json", "--artifacts", str(setup["artifacts"]))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert {s["status"] for s in summary["stages"]} == {"skipped"}
    assert summary["finale"]["generation"]["text"].strip()


def _parse_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line.removeprefix("export ").partition("=")
            out[k] = v
    return out


def test_registry_rollback_serves_the_bundle_production_moves_back_to(setup: dict[str, Any]) -> None:
    """A second release, promoted after the first; `rollback --registry` moves `production` back and
    the Triton model serves the first bundle again (the printed commands, with the printed env)."""
    if "summary" not in setup:
        pytest.skip("needs the finished run of the test above")
    recipe = yaml.safe_load(setup["recipe"].read_text())
    recipe["quantize"]["calibration"]["samples"] = 5  # another calibration: another bundle
    setup["recipe"].write_text(yaml.safe_dump(recipe))
    r = run_cli(setup, "run", str(setup["recipe"]), "--local", "--json", "--artifacts", str(setup["artifacts"]))
    assert r.returncode == 0, r.stderr[-3000:]
    fin = json.loads(r.stdout)["finale"]
    assert fin["release"]["version"] == 2 and fin["publish"]["version"] == 2
    env = {**setup["env"], **_parse_env(setup["artifacts"] / "local" / "local.env")}

    def cli(*args: str) -> dict[str, Any]:
        p = subprocess.run([*CLI, *args, "--json"], cwd=setup["dir"], env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        assert p.returncode == 0, p.stderr[-2000:]
        return dict(json.loads(p.stdout))

    cli("promote", "tiny-local", "--version", "1")
    assert cli("promote", "tiny-local", "--version", "2")["previous"] == 1
    back = cli("rollback", "tiny", "--registry", "--registered-model", "tiny-local")
    assert back["registry"] == {"model": "tiny-local", "from": 2, "to": 1}
    [m] = back["triton"]["models"]
    assert (m["action"], m["from_version"], m["to_version"]) == ("switch", 2, 1)
    from pipeline.triton.control import ModelControl

    assert ModelControl(env["TRTBUILD_TRITON_URL"]).ready_versions("tiny") == [1]
