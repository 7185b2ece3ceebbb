"""Triton model repositories on S3 (SeaweedFS on loopback), read by the real tritonserver.

First the bare fact: the nvidia-pytriton tritonserver loads a python-backend model from
`s3://HOST:PORT/bucket/prefix`; then the publish stage of `trtbuild run` into one. Publish,
switch, rollback and `trtbuild sync` into an s3:// repository run in the tests that cover a
directory too, parametrized over both (tests/integration/repo_targets.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.repository.s3 import S3Repository
from pipeline.triton.client import LLMClient
from pipeline.triton.control import ModelControl
from pipeline.triton.server import TritonServer
from tests.integration.repo_targets import own_bucket, upload_tree
from tests.integration.services_fixtures import BUCKET, S3Service, s3_env, s3_uri, seaweed_s3, use_s3_env
from tests.integration.triton_fixtures import start_triton, triton_install, write_echo_model

# longer than the 600 s default (pyproject.toml): a trtbuild run of up to 600 s
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
__all__ = ["s3_env", "s3_uri", "seaweed_s3", "start_triton", "triton_install"]


@pytest.fixture
def fresh_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Service]:
    """A SeaweedFS of this test's own. Observed here: after about 1,100 objects had been written to
    the session's SeaweedFS (in any bucket), tritonserver 2.51's reload of this model never found
    version 2 (not ready after 180 s), while on a fresh server the switch takes seconds; the cause
    is not known yet (README, S3 model repositories)."""
    from pipeline.local import process, seaweed
    from pipeline.local.services import credentials

    root = tmp_path / "seaweed"
    root.mkdir()
    access, secret = credentials(root)
    rec = seaweed.start_seaweed(root, access_key=access, secret_key=secret, timeout=60)
    seaweed.ensure_buckets(rec["endpoint"], access, secret, [BUCKET])
    svc = use_s3_env(S3Service(root, rec["endpoint"], access, secret, rec), monkeypatch, tmp_path)
    try:
        yield svc
    finally:
        process.stop(process.ProcInfo.from_dict(rec["proc"]))


def test_tritonserver_loads_a_python_model_from_seaweedfs(fresh_s3: S3Service, tmp_path: Path,
                                                          start_triton: object) -> None:
    s3_env = fresh_s3
    write_echo_model(tmp_path / "local", "echo", {1: "ok", 2: "ok"}, policy=(1,))
    # a bucket of its own: the session's test bucket fills up with other tests' objects, and in a
    # bucket of over 1,000 objects Triton stops finding new versions (check_bucket_size)
    bucket = own_bucket(s3_env)
    upload_tree(s3_env, tmp_path / "local", "repo", bucket=bucket)
    repo = S3Repository(f"s3://{bucket}/repo")
    assert repo.triton_uri().startswith("s3://127.0.0.1:") and repo.versions("echo") == [1, 2]
    server: TritonServer = start_triton(repo.triton_uri(), load=["echo"])  # type: ignore[operator]
    control = ModelControl(server.http_url)
    assert control.ready_versions("echo") == [1]
    gen = LLMClient(server.http_url, timeout=30).generate("echo", "one two three", max_tokens=8)
    assert gen.text == "one two three " and gen.model_version == 1
    # Version switches on S3 are tested under load by test_sync_into_an_s3_repository. A switch of
    # this echo model (both versions uploaded before the first load) failed intermittently in
    # full-suite runs (version 2 never ready), also on a SeaweedFS of its own: open finding, README.


def test_pipeline_publish_stage_into_s3(s3_env: S3Service, s3_uri: str, tmp_path: Path) -> None:
    """`trtbuild run` with publish.repository s3://...: the stage writes the version there, and a
    second run finds it still valid (skips)."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT
    from tests.tiny_model import save_tiny_checkpoint

    repo_uri = f"s3://{own_bucket(s3_env)}/repo"
    save_tiny_checkpoint(tmp_path / "src")
    recipe = {
        "name": "tiny-s3", "source": {"path": "src", "dtype": "float32"}, "target": {"gpu": "cpu"},
        "quantize": {"algo": "fp8", "kv_cache": "fp8", "calibration": {"samples": 4, "seq_len": 32}},
        "build": {"backend": "reference", "max_batch_size": 4, "max_seq_len": 256, "max_num_tokens": 512},
        "gates": {"accuracy": {"enabled": False}, "throughput": {"enabled": False}},
        "release": {"model_name": "tiny-s3", "store": f"file://{tmp_path / 'store'}",
                    "registry": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "publish": {"repository": repo_uri, "model_name": "tiny", "server_url": ""},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    argv = [sys.executable, "-m", "pipeline.cli.__main__", "run", str(tmp_path / "r.yaml"), "--json",
            "--artifacts", str(tmp_path / "artifacts")]
    runs = []
    for _ in range(2):
        r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), check=False,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append({s["name"]: s["status"] for s in json.loads(r.stdout)["stages"]})
    assert runs[0]["publish"] == "done" and runs[1]["publish"] == "skipped"
    repo = S3Repository(repo_uri)
    assert repo.versions("tiny") == [1] and repo.served_versions("tiny") == [1]
    assert repo.bundle_id("tiny", 1) is not None

