"""Real servers on loopback for the store, registry and local-services tests, and a bundle maker.

Test modules import the fixtures (`from tests.integration.services_fixtures import *`). Pytest
makes one fixture definition per importing module, so the session fixtures share one server
through a reference-counted cache: whichever module asks first starts it, the last one stops it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.local import mlflow_server, process, seaweed
from pipeline.local.services import credentials
from pipeline.util.hashing import canonical_json, file_entries, sha256_bytes

__all__ = [
    "S3Service",
    "make_bundle",
    "mlflow_http",
    "s3_env",
    "s3_uri",
    "seaweed_s3",
]

BUCKET = "trtbuild-test"


def make_bundle(bundle_dir: Path, files: dict[str, bytes], *, name: str = "test-bundle") -> str:
    """Write `files` and a manifest.json listing them into `bundle_dir`; return the bundle id."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = bundle_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    manifest = {
        "schema_version": 1,
        "kind": "trtbuild.bundle",
        "name": name,
        "backend": "reference",
        "files": file_entries(bundle_dir),
        "provenance": {"recipe_digest": "0" * 64},
        "compatibility": {"backend": "reference", "gpu": "cpu"},
    }
    data = canonical_json(manifest)
    (bundle_dir / "manifest.json").write_bytes(data)
    return sha256_bytes(data)


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    return dict(json.loads((Path(bundle_dir) / "manifest.json").read_bytes()))


# --------------------------------------------------------------------------- shared servers
_shared: dict[str, list[Any]] = {}


def _shared_service(
    name: str, start: Callable[[], Any], stop: Callable[[Any], None]
) -> Iterator[Any]:
    entry = _shared.get(name)
    if entry is None:
        entry = _shared[name] = [start(), 0]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _shared[name]
            stop(entry[0])


@dataclass(frozen=True)
class S3Service:
    root: Path
    endpoint: str
    access_key: str
    secret_key: str
    record: dict[str, Any]

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """One `weed mini` for the session, credentials enforced, buckets created."""

    def start() -> S3Service:
        root = tmp_path_factory.mktemp("seaweed")
        access, secret = credentials(root)
        rec = seaweed.start_seaweed(root, access_key=access, secret_key=secret, timeout=60)
        seaweed.ensure_buckets(rec["endpoint"], access, secret, [BUCKET, "trtbuild-mlflow"])
        return S3Service(root, rec["endpoint"], access, secret, rec)

    def stop(svc: S3Service) -> None:
        process.stop(process.ProcInfo.from_dict(svc.record["proc"]))

    yield from _shared_service("seaweed", start, stop)


@pytest.fixture(scope="session")
def mlflow_http(seaweed_s3: S3Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `mlflow server` (sqlite backend, artifacts on the SeaweedFS); yields its URL."""

    def start() -> dict[str, Any]:
        root = tmp_path_factory.mktemp("mlflow")
        (root / "logs").mkdir()
        rec = mlflow_server.start_mlflow(
            root,
            s3_endpoint=seaweed_s3.endpoint,
            access_key=seaweed_s3.access_key,
            secret_key=seaweed_s3.secret_key,
            timeout=120,
        )
        rec["root"] = str(root)
        return rec

    def stop(rec: dict[str, Any]) -> None:
        process.stop(process.ProcInfo.from_dict(rec["proc"]))

    for rec in _shared_service("mlflow", start, stop):
        yield str(rec["url"])


@pytest.fixture
def s3_env(seaweed_s3: S3Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Service:
    """The process environment of an S3 client of the session's SeaweedFS (and nothing else)."""
    return use_s3_env(seaweed_s3, monkeypatch, tmp_path)


def use_s3_env(svc: S3Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Service:
    """Point this process's AWS environment at `svc` only (no profile, config or other endpoint)."""
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for k, v in svc.env().items():
        monkeypatch.setenv(k, v)
    return svc


@pytest.fixture
def s3_uri(request: pytest.FixtureRequest) -> str:
    """A fresh store prefix per test in the test bucket."""
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"s3://{BUCKET}/t/{safe}"
