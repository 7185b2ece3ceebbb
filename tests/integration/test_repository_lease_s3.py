"""The writer lease on S3 (a real SeaweedFS): conditional writes, expiry, takeover, fencing.

Also checks that Triton ignores a lease beside a model, in a directory repository (poll and
explicit mode) and in an S3 repository.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ServiceError
from pipeline.repository.lease import DirLease, Holder, LeaseHeld, LeaseLost, held
from pipeline.repository.lease_s3 import S3Lease
from pipeline.triton.control import ModelControl
from pipeline.triton.server import TritonServer
from tests.integration.services_fixtures import BUCKET, S3Service, seaweed_s3
from tests.integration.triton_fixtures import start_triton, triton_install, write_echo_model
from tests.unit.lease_worker import Worker

pytestmark = pytest.mark.integration
__all__ = ["seaweed_s3", "start_triton", "triton_install"]  # fixtures used by name


def _code(call: Callable[[], dict[str, Any]]) -> int:
    from botocore.exceptions import ClientError

    try:
        return int(call()["ResponseMetadata"]["HTTPStatusCode"])
    except ClientError as e:
        return int(e.response["ResponseMetadata"]["HTTPStatusCode"])


@pytest.fixture
def prefix() -> str:
    return f"lease/{uuid.uuid4().hex[:10]}/repo"


def lease_of(svc: S3Service, prefix: str, *, margin: float = 0.3, client: Any = None) -> S3Lease:
    return S3Lease(client or svc.client(), BUCKET, prefix, "m", skew_margin=margin)


def worker(svc: S3Service, prefix: str, *args: str, env: dict[str, str] | None = None) -> Worker:
    return Worker("s3", BUCKET, prefix, "m", *args, env={**svc.env(), **(env or {})})


def test_seaweedfs_conditional_writes_the_design_rests_on(seaweed_s3: S3Service, prefix: str) -> None:
    c, key = seaweed_s3.client(), f"{prefix}/probe"
    etag = c.put_object(Bucket=BUCKET, Key=key, Body=b"a", IfNoneMatch="*")["ETag"]
    assert _code(lambda: c.put_object(Bucket=BUCKET, Key=key, Body=b"b", IfNoneMatch="*")) == 412
    assert _code(lambda: c.put_object(Bucket=BUCKET, Key=key, Body=b"c", IfMatch='"0000"')) == 412
    assert c.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"a"
    new = c.put_object(Bucket=BUCKET, Key=key, Body=b"d", IfMatch=etag)["ETag"]
    assert _code(lambda: c.put_object(Bucket=BUCKET, Key=key, Body=b"e", IfMatch=etag)) == 412
    assert _code(lambda: c.delete_object(Bucket=BUCKET, Key=key, IfMatch=etag)) == 412
    assert c.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"d"
    assert _code(lambda: c.delete_object(Bucket=BUCKET, Key=key, IfMatch=new)) == 204
    assert _code(lambda: c.head_object(Bucket=BUCKET, Key=key)) == 404


def test_exactly_one_of_two_takers_wins_a_free_or_expired_lease(seaweed_s3: S3Service,
                                                                prefix: str) -> None:
    clients = [seaweed_s3.client() for _ in range(2)]  # one each: no shared connection pool
    for rnd in range(20):
        if rnd % 2:  # an expired lease of a writer that died: the takeover path
            lease_of(seaweed_s3, prefix, margin=0.05, client=clients[0]).acquire(0, ttl=0.05)
            time.sleep(0.15)
        leases = [lease_of(seaweed_s3, prefix, margin=0.05, client=c) for c in clients]
        barrier = threading.Barrier(2)
        results = ["", ""]

        def take(i: int, leases: list[S3Lease] = leases, barrier: threading.Barrier = barrier,
                 results: list[str] = results) -> None:
            barrier.wait()
            try:
                leases[i].acquire(0, ttl=5)
                results[i] = "won"
            except LeaseHeld:
                results[i] = "held"

        threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(results) == ["held", "won"], f"round {rnd}: {results}"
        winner = leases[results.index("won")]
        winner.check()
        assert winner.holder() == winner._mine
        winner.release()
        assert winner.holder() is None


def test_second_writer_times_out_naming_the_holder_then_takes_turns(seaweed_s3: S3Service,
                                                                    prefix: str) -> None:
    holder = worker(seaweed_s3, prefix, "--hold", "30", env={"TRTBUILD_LEASE_OWNER": "bob-ci"})
    try:
        got = holder.wait_for("acquired")["holder"]
        with pytest.raises(LeaseHeld) as err:
            lease_of(seaweed_s3, prefix).acquire(0.7, ttl=2)
        line = err.value.one_line()
        assert f"bob-ci@{socket.gethostname()} pid {got['pid']}" in line
        assert f"model 'm' in repository s3://{BUCKET}/{prefix}" in line
        assert f"remove s3://{BUCKET}/{prefix}/.m.trtbuild-lease" in line and "wait until" in line
    finally:
        holder.kill()
    # Two processes at once on a fresh model: one holds, the other waits and follows.
    other = f"{prefix}-turns"
    start = str(time.time() + 1.5)
    workers = [worker(seaweed_s3, other, "--hold", "0.8", "--timeout", "20", "--start-at", start)
               for _ in range(2)]
    try:
        assert [w.finish() for w in workers] == [0, 0]
    finally:
        for w in workers:
            w.kill()
    spans = sorted((w.wait_for("acquired")["t"], w.wait_for("releasing")["t"]) for w in workers)
    assert spans[0][1] <= spans[1][0], f"both held the lease at once: {spans}"


def test_a_killed_holder_is_taken_over_after_expiry_never_before(seaweed_s3: S3Service,
                                                                  prefix: str) -> None:
    margin = 0.5
    holder = worker(seaweed_s3, prefix, "--hold", "60", "--ttl", "1.5", "--renew-every", "0.3")
    try:
        first = holder.wait_for("acquired")["holder"]
        time.sleep(2.0)  # longer than the ttl: it lives on renewals
        renewed = lease_of(seaweed_s3, prefix).holder()
        assert renewed is not None and renewed.token == first["token"]
        assert renewed.expires > first["expires"]
        os.kill(holder.proc.pid, signal.SIGKILL)
        holder.proc.wait(10)
    finally:
        holder.kill()
    last = lease_of(seaweed_s3, prefix).holder()  # no renewal after death: its final expiry
    assert last is not None and last.token == first["token"]
    taker = lease_of(seaweed_s3, prefix, margin=margin)
    seen: list[Holder | None] = []
    taker.acquire(10, ttl=5, on_wait=lambda h, w: seen.append(h))
    took = time.time()
    assert took >= last.expires_ts + margin, "taken over before the dead holder's lease expired"
    assert took < last.expires_ts + margin + 4, "took too long after expiry"  # polls <= 1 s apart
    assert seen and seen[0] is not None and seen[0].token == first["token"]
    assert taker.holder() == taker._mine
    taker.release()


def test_a_lease_released_between_create_and_read_is_taken_at_timeout_zero(
        seaweed_s3: S3Service, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = lease_of(seaweed_s3, prefix), lease_of(seaweed_s3, prefix)
    first.acquire(0, ttl=30)
    real_read = second._read

    def released_just_before_read() -> tuple[Holder | None, str, float] | None:
        if first._etag is not None:
            first.release()  # the holder lets go between our failed create and our read
        return real_read()

    monkeypatch.setattr(second, "_read", released_just_before_read)
    second.acquire(0, ttl=30)
    assert second.holder() == second._mine
    second.release()


def test_renewal_keeps_the_lease_past_its_ttl(seaweed_s3: S3Service, prefix: str) -> None:
    lease = lease_of(seaweed_s3, prefix, margin=0.1)
    with held(lease, timeout=1, ttl=1.0, renew_every=0.25):
        time.sleep(2.5)
        lease.check()
        with pytest.raises(LeaseHeld):
            lease_of(seaweed_s3, prefix, margin=0.1).acquire(0)
    assert lease.holder() is None  # released on exit
    no_renewal = lease_of(seaweed_s3, prefix, margin=0.1)
    no_renewal.acquire(0, ttl=0.5)
    time.sleep(0.7)
    with pytest.raises(LeaseLost, match="expired"):
        no_renewal.check()  # without renewal it stops trusting the lease at its expiry


def test_check_renew_release_after_a_takeover(seaweed_s3: S3Service, prefix: str) -> None:
    a, b = lease_of(seaweed_s3, prefix, margin=0.2), lease_of(seaweed_s3, prefix, margin=0.2)
    a.acquire(0, ttl=0.5)
    a.check()
    time.sleep(0.8)
    b.acquire(0, ttl=30)  # a's lease expired: b takes it over
    with pytest.raises(LeaseLost):
        a.check()
    a.release()  # with its stale etag: must not delete b's lease
    assert b.holder() == b._mine
    b.check()
    # Removed by hand (the hint's fix) and created by another writer: fenced by etag too.
    seaweed_s3.client().delete_object(Bucket=BUCKET, Key=b.key)
    c = lease_of(seaweed_s3, prefix)
    c.acquire(0, ttl=30)
    with pytest.raises(LeaseLost, match="took it over"):
        b.renew()  # its etag no longer matches: no late renewal steals it back
    with pytest.raises(LeaseLost):
        b.check()
    assert c.holder() == c._mine
    c.release()


def test_an_unreadable_lease_object_expires_a_ttl_after_it_was_written(seaweed_s3: S3Service,
                                                                        prefix: str) -> None:
    lease = lease_of(seaweed_s3, prefix, margin=0.1)
    seaweed_s3.client().put_object(Bucket=BUCKET, Key=lease.key, Body=b"not json")
    assert lease.holder() is None
    with pytest.raises(LeaseHeld, match="another writer"):
        lease.acquire(0.2, ttl=1.0)
    lease.acquire(5, ttl=1.0)
    lease.check()
    lease.release()


def test_refused_credentials_are_one_line(seaweed_s3: S3Service) -> None:
    import boto3

    client = boto3.session.Session().client(
        "s3", endpoint_url=seaweed_s3.endpoint, region_name="us-east-1",
        aws_access_key_id=seaweed_s3.access_key, aws_secret_access_key="wrong-secret")
    lease = S3Lease(client, BUCKET, "repo", "m")
    with pytest.raises(ServiceError, match=rf"lease write s3://{BUCKET}/repo/.m.trtbuild-lease: "
                                           r"S3 error SignatureDoesNotMatch") as err:
        lease.acquire(0)
    assert "\n" not in err.value.one_line() and "wrong-secret" not in err.value.one_line()


# ---------------------------------------------------------------------- Triton ignores it
def _assert_only_echo_loaded(server: TritonServer) -> None:
    control = ModelControl(server.http_url)
    deadline = time.monotonic() + 60
    while not control.is_ready("echo") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert control.is_ready("echo")
    assert [(m.name, m.state) for m in control.index()] == [("echo", "READY")]
    assert server.log_path is not None
    assert "trtbuild-lease" not in server.log_path.read_text(errors="replace")


@pytest.mark.parametrize("mode", ["poll", "explicit"])
def test_triton_ignores_a_held_lease_file(tmp_path: Path, mode: str,
                                          triton_install: object) -> None:
    write_echo_model(tmp_path, "echo")
    (tmp_path / "stray-file.txt").write_text("a plain top-level file is skipped too\n")
    lease = DirLease(tmp_path, "echo")
    lease.acquire(0, ttl=30)
    server = TritonServer(triton_install,  # type: ignore[arg-type]
                          extra_args=["--repository-poll-secs=1"] if mode == "poll" else [])
    try:
        server.start(tmp_path, model_control=mode, load=["echo"] if mode == "explicit" else [])
        if mode == "explicit":
            ModelControl(server.http_url).load("echo", timeout=60)  # a reload rescans the repo
        else:
            lease.release()  # a lease file coming and going between polls
            lease.acquire(0, ttl=30)
            time.sleep(2.5)
        _assert_only_echo_loaded(server)
    finally:
        server.stop()
        lease.release()


def test_triton_ignores_a_lease_object_in_an_s3_repository(seaweed_s3: S3Service, tmp_path: Path,
                                                           start_triton: Callable[..., TritonServer],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.services_fixtures import use_s3_env
    from tests.integration.test_s3_model_repository import own_bucket, upload_tree

    use_s3_env(seaweed_s3, monkeypatch, tmp_path)
    write_echo_model(tmp_path / "local", "echo")
    bucket = own_bucket(seaweed_s3)  # Triton needs small buckets (see that module)
    upload_tree(seaweed_s3, tmp_path / "local", "repo", bucket=bucket)
    lease = S3Lease(seaweed_s3.client(), bucket, "repo", "echo")
    lease.acquire(0, ttl=60)
    try:
        host = seaweed_s3.endpoint.split("://", 1)[1]
        server = start_triton(f"s3://{host}/{bucket}/repo", load=["echo"])
        _assert_only_echo_loaded(server)
    finally:
        lease.release()
