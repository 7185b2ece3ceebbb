"""Zero-downtime version switches on a real tritonserver, under continuous client load.

The switch and its restore paths run once per kind of repository (a directory, s3://bucket/prefix
on SeaweedFS read by the tritonserver itself); hung-load handling is about the server and runs once.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import ServiceError
from pipeline.repository import ModelRepository, open_repository
from pipeline.repository.switch import SwitchError, switch_version
from pipeline.triton.client import LLMClient
from pipeline.triton.control import ModelControl
from pipeline.triton.server import TritonServer
from tests.integration.repo_targets import KINDS, own_bucket, upload_tree
from tests.integration.services_fixtures import S3Service, s3_env, seaweed_s3
from tests.integration.triton_fixtures import (
    BackgroundLoad,
    Record,
    start_triton,
    triton_install,
    write_echo_model,
)

pytestmark = pytest.mark.integration
__all__ = ["s3_env", "seaweed_s3", "start_triton", "triton_install"]

StartTriton = Callable[..., TritonServer]
MODES = {1: "ok", 2: "ok", 3: "broken", 4: "hang"}


def _setup(repo: Path, start_triton: StartTriton) -> tuple[TritonServer, ModelControl, LLMClient]:
    write_echo_model(repo, "echo", versions=MODES, policy=[1], delay_s=0.004)
    server = start_triton(repo, load=["echo"])
    control = ModelControl(server.http_url)
    assert control.ready_versions("echo") == [1]
    return server, control, LLMClient(server.http_url, server.grpc_url, timeout=20)


@pytest.fixture(scope="module")
def module_bucket(seaweed_s3: S3Service) -> str:
    return own_bucket(seaweed_s3)  # a bucket of this module's own (Triton needs small buckets)


@pytest.fixture(params=KINDS)
def echo(request: pytest.FixtureRequest, tmp_path: Path,
         start_triton: StartTriton) -> tuple[ModelRepository, ModelControl, LLMClient]:
    """The echo model (versions MODES, serving 1) in a repository of the parametrized kind, loaded."""
    if request.param == "directory":
        _, control, client = _setup(tmp_path, start_triton)
        return open_repository(tmp_path), control, client
    svc: S3Service = request.getfixturevalue("s3_env")
    bucket = request.getfixturevalue("module_bucket")
    write_echo_model(tmp_path / "local", "echo", versions=MODES, policy=[1], delay_s=0.004)
    prefix = f"r-{uuid.uuid4().hex[:8]}"
    upload_tree(svc, tmp_path / "local", prefix, bucket=bucket)
    repo = open_repository(f"s3://{bucket}/{prefix}")
    server = start_triton(repo.triton_uri(), load=["echo"])
    control = ModelControl(server.http_url)
    assert control.ready_versions("echo") == [1]
    return repo, control, LLMClient(server.http_url, server.grpc_url, timeout=20)


def _runs(records: list[Record], transport: str) -> list[int | None]:
    """The answering versions of one client thread in send order, repeats collapsed."""
    ordered = sorted((r for r in records if r.transport == transport), key=lambda r: r.sent)
    return [v for v, _ in itertools.groupby(r.version for r in ordered)]


def test_switch_v1_v2_v1_under_load(echo: tuple[ModelRepository, ModelControl, LLMClient]) -> None:
    repo, control, client = echo
    windows = []
    with BackgroundLoad(client, "echo") as load:
        time.sleep(0.4)
        for target in (2, 1):
            smoked: list[int] = []

            def smoke(v: int, smoked: list[int] = smoked) -> None:
                gen = client.generate("echo", "smoke test", version=v, timeout=10)
                assert gen.text == "smoke test " and gen.model_version == v
                smoked.append(v)

            t_start = time.monotonic()
            result = switch_version(control, repo, "echo", target, timeout=60, smoke=smoke)
            t_end = time.monotonic()
            windows.append((target, t_start, t_end))
            assert smoked == [target]
            assert result.version == target and result.previous_versions == [3 - target]
            assert 0 < result.load_s <= result.total_s and result.overhead_s >= 0
            assert control.ready_versions("echo") == [target]
            assert f"versions: {target}" in (repo.config("echo") or b"").decode()
            time.sleep(0.4)
    records = load.snapshot()
    assert load.failures() == []
    assert all(r.text == "one two three " for r in records)
    for transport in ("http", "grpc"):
        # the answering version changed exactly twice, never flipping back and forth
        assert _runs(records, transport) == [1, 2, 1], transport
    for target, t_start, t_end in windows:
        old = 3 - target
        after = [r for r in records if r.sent > t_end]
        assert after and all(r.version == target for r in after if r.sent < t_end + 0.35)
        if target == 2:  # v2 never served before this switch: nothing before the switch began
            assert all(r.sent >= t_start for r in records if r.version == 2 and r.sent < t_end + 1)
        before = [r for r in records if r.done < t_start and r.sent > t_start - 0.3]
        assert before and all(r.version == old for r in before)
    during = [r for r in records if any(s <= r.sent <= e for _, s, e in windows)]
    assert len(during) >= 4, "requests were in flight during the switches"


def test_broken_version_is_refused_and_old_keeps_serving(
        echo: tuple[ModelRepository, ModelControl, LLMClient]) -> None:
    repo, control, client = echo
    before = repo.config("echo")
    cfg = repo.local_version_dir("echo", 1)
    mode = cfg.parent.joinpath("config.pbtxt").stat().st_mode if cfg else None
    with BackgroundLoad(client, "echo") as load:
        time.sleep(0.3)
        with pytest.raises(SwitchError, match="Triton refused the new version") as err:
            switch_version(control, repo, "echo", 3, timeout=30)
        time.sleep(0.3)
    assert err.value.reason == "load" and err.value.restored and err.value.serving == [1]
    assert "broken test model: initialize raises" in str(err.value)
    assert repo.config("echo") == before
    if cfg:  # a directory: the operator's permissions survive the restore
        assert cfg.parent.joinpath("config.pbtxt").stat().st_mode == mode
    assert control.ready_versions("echo") == [1]
    assert load.failures() == []
    assert {r.version for r in load.snapshot()} == {1}


def test_hanging_load_is_bounded_and_recovered(tmp_path: Path, start_triton: StartTriton) -> None:
    _, control, client = _setup(tmp_path, start_triton)
    cfg = tmp_path / "echo" / "config.pbtxt"
    before = cfg.read_bytes()
    with BackgroundLoad(client, "echo") as load:
        t0 = time.monotonic()
        with pytest.raises(SwitchError, match="load timed out") as err:
            switch_version(control, tmp_path, "echo", 4, timeout=3, restore_timeout=20)
        elapsed = time.monotonic() - t0
        assert err.value.reason == "timeout" and err.value.restored and err.value.serving == [1]
        assert "killed hung stub" in str(err.value)
        assert cfg.read_bytes() == before
        # Triton is not left stuck behind the hung load: the next switch works
        result = switch_version(control, tmp_path, "echo", 2, timeout=30)
        time.sleep(0.3)
    assert 3 <= elapsed < 15
    assert result.version == 2 and control.ready_versions("echo") == [2]
    assert load.failures() == []
    assert _runs(load.snapshot(), "http") == [1, 2]


def test_hanging_load_without_stub_kill_is_reported(
        tmp_path: Path, start_triton: StartTriton) -> None:
    """What a stub that never starts looks like (nothing on this host to kill): the switch
    returns after its timeout, not after restore_timeout, and the old version keeps serving."""
    server, control, client = _setup(tmp_path, start_triton)
    cfg = tmp_path / "echo" / "config.pbtxt"
    before = cfg.read_bytes()
    t0 = time.monotonic()
    with pytest.raises(SwitchError, match="restart the server") as err:
        switch_version(control, tmp_path, "echo", 4, timeout=2, restore_timeout=60,
                       kill_hung_stubs=False)
    assert time.monotonic() - t0 < 6
    assert err.value.reason == "timeout" and not err.value.restored and err.value.serving == [1]
    assert cfg.read_bytes() == before
    assert client.stream("echo", "still here").model_version == 1
    t0 = time.monotonic()
    server.stop()  # a server with a hung load still stops, within its exit timeout + kill
    assert time.monotonic() - t0 < 15


def test_failed_smoke_restores_previous_version(echo: tuple[ModelRepository, ModelControl, LLMClient]) -> None:
    repo, control, client = echo
    before = repo.config("echo")

    def smoke(v: int) -> None:
        raise RuntimeError(f"version {v} answers nonsense")

    with BackgroundLoad(client, "echo") as load:
        time.sleep(0.3)
        with pytest.raises(SwitchError, match=r"smoke check failed.*answers nonsense") as err:
            switch_version(control, repo, "echo", 2, timeout=30, smoke=smoke)
        time.sleep(0.3)
    assert err.value.reason == "smoke" and err.value.serving == [1]
    assert repo.config("echo") == before
    assert control.ready_versions("echo") == [1]
    assert load.failures() == []


def test_missing_version_touches_nothing(echo: tuple[ModelRepository, ModelControl, LLMClient]) -> None:
    repo, control, _ = echo
    before = repo.config("echo")
    with pytest.raises(ServiceError, match="no version directory"):
        switch_version(control, repo, "echo", 9)
    with pytest.raises(ServiceError, match=r"no config\.pbtxt"):
        switch_version(control, repo, "other", 1)
    assert repo.config("echo") == before
