"""Triton model repositories on S3 (SeaweedFS on loopback), read by the real tritonserver.

First the bare fact: the nvidia-pytriton tritonserver loads a python-backend model from
`s3://HOST:PORT/bucket/prefix`; then the publish stage of `trtbuild run` into one. Publish,
switch, rollback and `trtbuild sync` into an s3:// repository run in the tests that cover a
directory too, parametrized over both (tests/integration/repo_targets.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.repository.s3 import S3Repository
from pipeline.repository.switch import switch_version
from pipeline.triton.client import LLMClient
from pipeline.triton.control import ModelControl
from pipeline.triton.server import TritonServer
from tests.integration.repo_targets import own_bucket, upload_tree
from tests.integration.services_fixtures import S3Service, s3_env, s3_uri, seaweed_s3
from tests.integration.triton_fixtures import start_triton, triton_install, write_echo_model

# longer than the 600 s default (pyproject.toml): a trtbuild run of up to 600 s
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
__all__ = ["s3_env", "s3_uri", "seaweed_s3", "start_triton", "triton_install"]


def test_tritonserver_loads_a_python_model_from_seaweedfs(s3_env: S3Service, tmp_path: Path,
                                                          start_triton: object) -> None:
    write_echo_model(tmp_path / "local", "echo", {1: "ok", 2: "ok"}, policy=(1,))
    # a bucket of its own: Triton walks every object under the repository on each index request
    bucket = own_bucket(s3_env)
    upload_tree(s3_env, tmp_path / "local", "repo", bucket=bucket)
    repo = S3Repository(f"s3://{bucket}/repo")
    assert repo.triton_uri().startswith("s3://127.0.0.1:") and repo.versions("echo") == [1, 2]
    server: TritonServer = start_triton(repo.triton_uri(), load=["echo"])  # type: ignore[operator]
    control = ModelControl(server.http_url)
    assert control.ready_versions("echo") == [1]
    gen = LLMClient(server.http_url, timeout=30).generate("echo", "one two three", max_tokens=8)
    assert gen.text == "one two three " and gen.model_version == 1
    # a switch straight after the first load: it failed intermittently ("version 2 not ready")
    # before config.pbtxt was written later than every object Triton saw (put_newer, README)
    res = switch_version(control, repo, "echo", 2, timeout=120)
    assert control.ready_versions("echo") == [2] and res.load_s > 0
    assert repo.served_versions("echo") == [2]


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


def test_put_newer_outdates_every_object_of_the_prefix(s3_env: S3Service) -> None:
    """Two writes within one second: the second is rewritten in the next second, and no sooner."""
    import time

    from pipeline.util.s3_newer import newest_modified, put_newer

    client, bucket = s3_env.client(), own_bucket(s3_env)
    time.sleep(1.02 - time.time() % 1)
    client.put_object(Bucket=bucket, Key="m/1/model.py", Body=b"1")
    first = newest_modified(client, bucket, "m/")
    t0 = time.monotonic()
    new = put_newer(client, bucket, "m/config.pbtxt", b"cfg", prefix="m/")
    assert first is not None and int(new.timestamp()) == int(first.timestamp()) + 1
    assert 0.0 < time.monotonic() - t0 < 2.0
    again = put_newer(client, bucket, "m/other", b"x", prefix="nothing-here/")  # no older object: one put
    assert client.get_object(Bucket=bucket, Key="m/config.pbtxt")["Body"].read() == b"cfg" and again


def _config_with_policy(repo: S3Repository, model: str, version: int) -> bytes:
    from pipeline.repository import pbtxt

    return pbtxt.with_version_policy((repo.read_file(model, "config.pbtxt") or b"").decode(),
                                     specific=[version]).encode()


@pytest.mark.parametrize("fixed", [True, False], ids=["put_newer", "planted-plain-put"])
def test_a_switch_in_the_same_second_as_the_last_load_is_not_ignored(
        s3_env: S3Service, tmp_path: Path, start_triton: object, monkeypatch: pytest.MonkeyPatch, fixed: bool) -> None:
    """Issue 16's reload that "never found its new version": Triton reloads a model from S3 only
    if the newest Last-Modified under the model's directory grew since its last load, and S3 gives
    whole seconds. Load A (policy [2]) is running; switch B to version 1 writes config.pbtxt within
    the second of A's write. A plain put (the planted fault: trtbuild's write before the fix)
    makes Triton take B's load for a no-op, and B fails exactly as the removed echo switch did
    ("version 1 not ready after ..."). put_newer waits for the next second, so B's reload happens."""
    import threading
    import time

    from pipeline.repository.switch import SwitchError

    b_writes: list[int] = []

    def plain_put(client: Any, bucket: str, key: str, data: bytes, *, prefix: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)
        b_writes.append(int(client.head_object(Bucket=bucket, Key=key)["LastModified"].timestamp()))

    if not fixed:
        monkeypatch.setattr("pipeline.repository.s3.put_newer", plain_put)
    write_echo_model(tmp_path / "local", "echo", {1: "ok", 2: "ok"}, policy=(1,))
    bucket = own_bucket(s3_env)
    upload_tree(s3_env, tmp_path / "local", "repo", bucket=bucket)
    repo = S3Repository(f"s3://{bucket}/repo")
    server: TritonServer = start_triton(repo.triton_uri(), load=["echo"])  # type: ignore[operator]
    control = ModelControl(server.http_url)
    client, key = repo.client, repo.key("echo", "config.pbtxt")
    log = server.log_path
    assert log is not None

    def last_modified() -> int:
        return int(client.head_object(Bucket=bucket, Key=key)["LastModified"].timestamp())

    for _attempt in range(5):
        control.load("echo", timeout=60)  # config.pbtxt says [1] here, whatever the last try left
        control.wait_ready("echo", 1, timeout=60)
        b_writes.clear()
        mark = b'"loading: echo:2"'
        seen = log.read_bytes().count(mark)
        time.sleep(1.02 - time.time() % 1)  # the start of a second: A and B fit in it
        client.put_object(Bucket=bucket, Key=key, Body=_config_with_policy(repo, "echo", 2))
        a_second = last_modified()
        load_a = threading.Thread(target=control.load, args=("echo",), kwargs={"timeout": 60})
        load_a.start()
        deadline = time.monotonic() + 30
        while log.read_bytes().count(mark) == seen:  # A has read its timestamps and config
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.01)
        if fixed:
            switch_version(control, repo, "echo", 1, timeout=60)
            load_a.join(timeout=60)
            assert last_modified() > a_second and control.ready_versions("echo") == [1]
            return
        try:
            switch_version(control, repo, "echo", 1, timeout=8)
            failed = ""
        except SwitchError as e:
            failed = str(e)
        load_a.join(timeout=60)
        if b_writes[0] == a_second:  # B wrote within A's second: Triton took B's load for a no-op
            assert "version 1 not ready" in failed and control.ready_versions("echo") == [2], failed
            return
        assert not failed, failed  # B's write fell into the next second on its own: a real reload
        client.put_object(Bucket=bucket, Key=key, Body=_config_with_policy(repo, "echo", 1))
    pytest.fail("switch B never wrote within the second of load A in 5 tries (machine too slow)")
