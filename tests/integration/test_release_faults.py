"""Service faults in the middle of a release: SeaweedFS or MLflow stops at an exact request.

A real `weed mini` and a real `mlflow server` of this module's own sit behind a FaultProxy each.
The proxy cuts at a chosen request and the test stops the real service there (the cut is the
stop: connections die mid-request, new ones are refused); then the service is started again on
its data and the release is run again. What must hold after each fault:
- the failed run says so in one line (no traceback) and exits non-zero;
- no registry version exists that points at a bundle missing from the store;
- the rerun completes, uploads only what the store did not already hold (nothing twice), and
  leaves exactly one registry version with the alias.
The pipeline up to build runs once (cached); each case reruns only release, under its own store
prefix and registered model, so cases do not see each other's state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.bundle import read_manifest
from pipeline.errors import RegistryError
from pipeline.local import mlflow_server, process, seaweed
from pipeline.local.services import credentials
from pipeline.registry.mlflow_registry import open_registry
from pipeline.store import open_store
from tests.conftest import ROOT
from tests.integration.fault_proxy import FaultProxy
from tests.tiny_model import save_tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
BUCKET = "faults"


@dataclass
class Services:
    root: Path
    access: str
    secret: str
    seaweed: dict[str, Any]
    mlflow: dict[str, Any]
    s3: FaultProxy
    ml: FaultProxy

    def stop_seaweed(self) -> None:
        process.stop(process.ProcInfo.from_dict(self.seaweed["proc"]), grace=5)

    def stop_mlflow(self) -> None:
        process.stop(process.ProcInfo.from_dict(self.mlflow["proc"]), grace=5)

    def start_seaweed(self) -> None:
        port = self.seaweed["ports"]["s3"] if self.seaweed else None
        self.seaweed = seaweed.start_seaweed(self.root / "s3", access_key=self.access, secret_key=self.secret,
                                             preferred_s3=port, timeout=60)

    def start_mlflow(self) -> None:
        # its artifacts on its own disk: a SeaweedFS restart (possibly on other ports) must not
        # break MLflow itself; only trtbuild's view of each service is cut
        self.mlflow = mlflow_server.start_mlflow(self.root / "ml", s3_endpoint=self.seaweed["endpoint"],
                                                 access_key=self.access, secret_key=self.secret,
                                                 artifacts_destination=str(self.root / "ml" / "artifacts"),
                                                 preferred_port=self.mlflow.get("port") if self.mlflow else None,
                                                 timeout=120)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        env.update({"AWS_ACCESS_KEY_ID": self.access, "AWS_SECRET_ACCESS_KEY": self.secret,
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": self.s3.endpoint,
                    "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"})
        return env


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("faults")
    for d in ("s3", "ml/logs"):
        (root / d).mkdir(parents=True)
    access, secret = credentials(root)
    svc = Services(root, access, secret, {}, {}, None, None)  # type: ignore[arg-type]
    svc.start_seaweed()
    seaweed.ensure_buckets(svc.seaweed["endpoint"], access, secret, [BUCKET])
    svc.start_mlflow()
    svc.s3 = FaultProxy(svc.seaweed["ports"]["s3"], on_cut=svc.stop_seaweed)
    svc.ml = FaultProxy(svc.mlflow["port"], on_cut=svc.stop_mlflow)
    try:
        yield svc
    finally:
        svc.s3.close()
        svc.ml.close()
        for rec in (svc.mlflow, svc.seaweed):
            if rec:
                process.stop(process.ProcInfo.from_dict(rec["proc"]), grace=5)


@pytest.fixture(scope="module")
def built(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A recipe whose stages up to build are cached; release reads STORE and MODEL."""
    d = tmp_path_factory.mktemp("faults-recipe")
    save_tiny_checkpoint(d / "src")
    recipe = {
        "name": "faults", "source": {"path": "src", "dtype": "float32"}, "target": {"gpu": "cpu"},
        "quantize": {"algo": "fp8", "kv_cache": "fp8", "calibration": {"samples": 4, "seq_len": 32}},
        "build": {"backend": "reference", "max_batch_size": 4, "max_seq_len": 256, "max_num_tokens": 512},
        "gates": {"accuracy": {"enabled": False}, "throughput": {"enabled": False}},
        "release": {"model_name": "${MODEL}", "store": "${STORE}", "registry": "${REGISTRY}"},
        "publish": {"enabled": False},
    }
    (d / "r.yaml").write_text(yaml.safe_dump(recipe))
    r = trtbuild(d, services, "run", "--until", "build", store="s3://unused/x", model="unused")
    assert r.returncode == 0, r.stderr[-3000:]
    build = next(s for s in json.loads(r.stdout)["stages"] if s["name"] == "build")
    manifest, _ = read_manifest(Path(build["outputs"]["bundle"]))
    files = {f["path"]: f["size"] for f in manifest["files"]}
    return {"dir": d, "bundle_id": build["summary"]["bundle_id"], "files": files}


def trtbuild(d: Path, svc: Services, *args: str, store: str, model: str) -> subprocess.CompletedProcess[str]:
    env = {**svc.env(), "STORE": store, "MODEL": model, "REGISTRY": svc.ml.endpoint}
    return subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", *args, str(d / "r.yaml"), "--json",
                           "--artifacts", str(d / "artifacts")], capture_output=True, text=True, cwd=ROOT,
                          env=env, check=False, timeout=600)


def release(built: dict[str, Any], svc: Services, case: str) -> subprocess.CompletedProcess[str]:
    return trtbuild(built["dir"], svc, "run", store=f"s3://{BUCKET}/{case}", model=f"faults-{case}")


def release_summary(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr[-3000:]
    return next(s for s in json.loads(r.stdout)["stages"] if s["name"] == "release")["summary"]


def assert_failed_clearly(r: subprocess.CompletedProcess[str], svc: Services, *words: str) -> None:
    assert r.returncode != 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert any(w in r.stderr for w in words), r.stderr[-2000:]


def versions(svc: Services, case: str) -> list[dict[str, Any]]:
    reg = open_registry(svc.ml.endpoint)
    try:
        return reg.list_versions(f"faults-{case}")
    except RegistryError as e:  # no such registered model: nothing was registered
        assert "RESOURCE_DOES_NOT_EXIST" in str(e) or "not found" in str(e).lower(), e
        return []


def stored_files(svc: Services, built: dict[str, Any], case: str) -> set[str]:
    """Files of the bundle already complete in the store (size as in the manifest)."""
    store = open_store(f"s3://{BUCKET}/{case}")
    prefix = f"{store._bundle_key(built['bundle_id'])}/files/"  # type: ignore[attr-defined]
    out = store.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
    return {o["Key"][len(prefix):] for o in out.get("Contents", [])
            if built["files"].get(o["Key"][len(prefix):]) == o["Size"]}


def every_version_has_its_bundle(svc: Services, case: str) -> None:
    store = open_store(f"s3://{BUCKET}/{case}")
    for v in versions(svc, case):
        assert store.exists(v["digest"]), f"version {v['version']} points at a missing bundle {v['digest']}"


@pytest.fixture
def s3_client_env(services: Services, monkeypatch: pytest.MonkeyPatch) -> Services:
    for k, v in services.env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return services


def test_seaweedfs_stops_in_the_middle_of_the_upload(built: dict[str, Any], s3_client_env: Services) -> None:
    svc, case = s3_client_env, "mid-upload"
    total = sum(built["files"].values())
    svc.s3.arm(after_bytes=int(total * 0.4))
    r = release(built, svc, case)
    assert svc.s3.cut.is_set(), "the upload finished before the cut"
    assert_failed_clearly(r, svc, "S3", "store", "endpoint")
    assert versions(svc, case) == []  # nothing registered for a bundle that is not stored
    svc.start_seaweed()
    svc.s3.restore(svc.seaweed["ports"]["s3"])
    before = stored_files(svc, built, case)
    s = release_summary(release(built, svc, case))
    # only what was not complete is uploaded: nothing twice
    assert s["skipped_files"] == len(before)
    assert s["uploaded_files"] == len(built["files"]) - len(before)
    assert s["uploaded_bytes"] == sum(size for p, size in built["files"].items() if p not in before)
    vs = versions(svc, case)
    assert len(vs) == 1 and vs[0]["digest"] == built["bundle_id"] and "candidate" in vs[0]["aliases"]
    every_version_has_its_bundle(svc, case)


def test_seaweedfs_stops_just_before_the_manifest(built: dict[str, Any], s3_client_env: Services) -> None:
    svc, case = s3_client_env, "before-manifest"
    svc.s3.arm(pattern=rb"PUT /[^ ]*/manifest\.json")
    r = release(built, svc, case)
    assert svc.s3.cut.is_set()
    assert_failed_clearly(r, svc, "S3", "store", "endpoint")
    assert versions(svc, case) == []
    svc.start_seaweed()
    svc.s3.restore(svc.seaweed["ports"]["s3"])
    assert stored_files(svc, built, case) == set(built["files"])  # every file, no manifest
    assert not open_store(f"s3://{BUCKET}/{case}").exists(built["bundle_id"])
    s = release_summary(release(built, svc, case))
    assert (s["uploaded_files"], s["uploaded_bytes"], s["skipped_files"]) == (0, 0, len(built["files"]))
    assert len(versions(svc, case)) == 1
    every_version_has_its_bundle(svc, case)


@pytest.mark.parametrize("request_line", [rb"POST /api/2.0/mlflow/model-versions/create",
                                          rb"POST /api/2.0/mlflow/registered-models/alias"],
                         ids=["before-version", "before-alias"])
def test_mlflow_stops_in_the_middle_of_registering(built: dict[str, Any], s3_client_env: Services,
                                                     request_line: bytes) -> None:
    svc = s3_client_env
    case = "ml-" + request_line.decode().rsplit("/", 1)[-1]
    svc.ml.arm(pattern=request_line)
    r = release(built, svc, case)
    assert svc.ml.cut.is_set()
    assert_failed_clearly(r, svc, "MLflow", "registry")
    svc.start_mlflow()
    svc.ml.restore(svc.mlflow["port"])
    before = versions(svc, case)
    assert len(before) == (1 if b"alias" in request_line else 0)
    every_version_has_its_bundle(svc, case)
    s = release_summary(release(built, svc, case))
    assert s["uploaded_bytes"] == 0 and s["skipped_files"] == len(built["files"])  # stored by the failed run
    vs = versions(svc, case)
    assert len(vs) == 1 and "candidate" in vs[0]["aliases"]  # the same version, not a second one
    every_version_has_its_bundle(svc, case)
