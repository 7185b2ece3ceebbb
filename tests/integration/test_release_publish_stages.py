"""fetch -> quantize -> build -> release -> publish through the runner, gates disabled:
file:// store, MLflow over sqlite, a Triton repository on disk. Secrets never reach MLflow."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.registry.mlflow_registry import open_registry
from pipeline.repository.local import DirectoryRepository
from tests.conftest import ROOT
from tests.tiny_model import save_tiny_checkpoint

# longer than the 600 s default (pyproject.toml): two trtbuild runs of up to 600 s each in one test
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]
SECRET = "s3cr3t-value-planted-by-the-test"  # noqa: S105


def test_release_and_publish(tmp_path: Path) -> None:
    save_tiny_checkpoint(tmp_path / "src")
    recipe = {
        "name": "tiny-release", "description": "token ${SECRET_TOKEN}",
        "source": {"path": "src", "dtype": "float32"}, "target": {"gpu": "cpu"},
        "quantize": {"algo": "fp8", "kv_cache": "fp8", "calibration": {"samples": 4, "seq_len": 32}},
        "build": {"backend": "reference", "max_batch_size": 4, "max_seq_len": 256, "max_num_tokens": 512},
        "gates": {"accuracy": {"enabled": False}, "throughput": {"enabled": False}},
        "release": {"model_name": "tiny-release", "store": "${STORE}", "registry": "${REGISTRY}"},
        "publish": {"repository": str(tmp_path / "repo"), "model_name": "tiny", "server_url": ""},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "r.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "recipe"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    env = {**os.environ, "STORE": f"file://{tmp_path / 'store'}", "REGISTRY": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "SECRET_TOKEN": SECRET}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "run", str(tmp_path / "r.yaml"), "--json",
                        "--artifacts", str(tmp_path / "artifacts")], capture_output=True, text=True, cwd=ROOT,
                       env=env, check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    st = {s["name"]: s for s in summary["stages"]}
    assert st["release"]["status"] == "done" and st["publish"]["status"] == "done"
    assert st["accuracy"]["status"] == "skipped"
    # the store holds the bundle under its digest, manifest last
    bundle_id = json.loads((tmp_path / "artifacts/runs").glob("*.json").__next__().read_text())["stages"][2][
        "summary"]["bundle_id"]
    assert (tmp_path / "store" / "bundles" / bundle_id / "manifest.json").is_file()
    # MLflow: a version with alias candidate, source = the store URI, tagged with the digest
    reg = open_registry(env["REGISTRY"])
    versions = reg.list_versions("tiny-release")
    assert len(versions) == 1 and "candidate" in versions[0]["aliases"]
    assert versions[0]["digest"] == bundle_id and versions[0]["source"].startswith("file://")
    assert versions[0]["git_commit"] == head  # the recipe's commit, as the bundle's provenance records it
    # Triton repository: version 1 with the bundle, served
    md = DirectoryRepository(tmp_path / "repo")
    assert md.versions("tiny") == [1] and md.served_versions("tiny") == [1] and md.bundle_id("tiny", 1) == bundle_id
    # the secret from the environment is nowhere: stdout, stderr, run records, MLflow's database
    assert SECRET not in r.stdout and SECRET not in r.stderr
    for p in (tmp_path / "artifacts" / "runs").glob("*.json"):
        assert SECRET not in p.read_text()
    db = sqlite3.connect(tmp_path / "mlflow.db")
    for (table,) in db.execute("select name from sqlite_master where type='table'").fetchall():
        assert SECRET not in json.dumps(db.execute(f"select * from {table}").fetchall(), default=str)  # noqa: S608
    # a second run: every stage skipped (publish still valid, bundle still stored)
    again = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "run", str(tmp_path / "r.yaml"), "--json",
                            "--artifacts", str(tmp_path / "artifacts")], capture_output=True, text=True, cwd=ROOT,
                           env=env, check=False, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {s["status"] for s in json.loads(again.stdout)["stages"]} == {"skipped"}


def test_promote_list_rollback_cli(tmp_path: Path) -> None:
    reg_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = open_registry(reg_uri)
    for i in (1, 2):
        reg.register_bundle("m", f"file://{tmp_path}/store/bundles/{i:064x}", f"{i:064x}")

    def cli(*args: str) -> dict[str, object]:
        r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", *args, "--json"], capture_output=True,
                           text=True, cwd=ROOT, check=False, env={**os.environ, "MLFLOW_TRACKING_URI": reg_uri})
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    assert cli("promote", "m", "--version", "1")["production"] == 1
    assert cli("promote", "m", "--version", "2") == {"model": "m", "previous": 1, "production": 2}
    rows = cli("list", "m")["versions"]
    assert {r["version"]: r["aliases"] for r in rows} == {1: [], 2: ["production"]}  # type: ignore[index, union-attr]
    back = cli("rollback", "m", "--registry", reg_uri, "--no-triton")
    assert back["registry"] == {"model": "m", "from": 2, "to": 1}
