"""The writer lease on a directory repository: flock, holder file, waits, kills, fencing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import LockError, TrtbuildError, UsageError
from pipeline.repository.lease import (
    DirLease,
    Holder,
    LeaseHeld,
    LeaseLost,
    default_owner,
    held,
    waiting_line,
)
from tests.unit.lease_worker import Worker


def test_lease_file_is_a_hidden_top_level_file(tmp_path: Path) -> None:
    lease = DirLease(tmp_path, "llama")
    lease.acquire(1, ttl=5)
    assert lease.path == tmp_path / ".llama.trtbuild-lease" and lease.path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [".llama.trtbuild-lease"]
    body = json.loads(lease.path.read_bytes())
    assert body["pid"] == os.getpid() and body["host"] == socket.gethostname()
    assert body["model"] == "llama" and body["owner"] == default_owner()
    assert lease.holder() == Holder.from_json(lease.path.read_bytes())
    lease.release()
    assert not lease.path.exists()
    assert lease.holder() is None


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "a\0b"])
def test_model_name_must_be_one_path_component(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="plain directory name"):
        DirLease(tmp_path, bad)


def test_missing_or_read_only_repository_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"model repository .*/nope is not a directory"):
        DirLease(tmp_path / "nope", "m").acquire(0)
    if os.geteuid() != 0:  # root writes anywhere
        tmp_path.chmod(0o555)
        try:
            with pytest.raises(TrtbuildError, match="permission denied"):
                DirLease(tmp_path, "m").acquire(0)
        finally:
            tmp_path.chmod(0o755)


def test_owner_from_env_then_ci_then_user(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("TRTBUILD_LEASE_OWNER", "GITHUB_RUN_ID", "CI_JOB_ID"):
        monkeypatch.delenv(k, raising=False)
    user = default_owner()
    monkeypatch.setenv("CI_JOB_ID", "77")
    assert default_owner() == "ci-job-77"
    monkeypatch.setenv("GITHUB_RUN_ID", "12")
    assert default_owner() == "github-run-12"
    monkeypatch.setenv("TRTBUILD_LEASE_OWNER", "nightly")
    assert default_owner() == "nightly" != user


def test_torn_or_empty_holder_file_reads_as_none() -> None:
    h = Holder.new(10)
    data = h.to_json(model="m")
    assert Holder.from_json(data) == h
    for torn in (b"", data[: len(data) // 2], b"{}", b"[1]", b'{"owner": 1}'):
        assert Holder.from_json(torn) is None


def test_two_threads_exactly_one_wins_each_round(tmp_path: Path) -> None:
    for _ in range(20):
        leases = [DirLease(tmp_path, "m"), DirLease(tmp_path, "m")]
        barrier = threading.Barrier(2)
        results: list[str] = ["", ""]

        def take(i: int, leases: list[DirLease] = leases, barrier: threading.Barrier = barrier,
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
            t.join(10)
        assert sorted(results) == ["held", "won"]
        leases[results.index("won")].release()


def test_waiter_gets_it_after_release_and_is_told_who_holds_it(tmp_path: Path) -> None:
    first, second = DirLease(tmp_path, "m"), DirLease(tmp_path, "m")
    mine = first.acquire(1, ttl=5)
    told: list[tuple[Holder | None, float]] = []
    released_at: list[float] = []

    def release_later() -> None:
        time.sleep(0.6)
        released_at.append(time.monotonic())
        first.release()

    threading.Thread(target=release_later).start()
    got = second.acquire(5, ttl=5, on_wait=lambda h, w: told.append((h, w)))
    assert time.monotonic() >= released_at[0]
    assert got.token != mine.token and second.holder() == got
    assert told and told[0][0] == mine  # the first wait is reported at once, naming the holder
    assert "held by" in waiting_line("m", told[0][0], told[0][1])
    second.release()


def test_second_process_fails_after_timeout_naming_the_holder(tmp_path: Path) -> None:
    holder = Worker("dir", str(tmp_path), "llama", "--hold", "30",
                    env={"TRTBUILD_LEASE_OWNER": "alice-ci"})
    try:
        got = holder.wait_for("acquired")["holder"]
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld) as err:
            DirLease(tmp_path, "llama").acquire(0.7, ttl=5)
        waited = time.monotonic() - t0
        assert 0.7 <= waited < 3
        line = err.value.one_line()
        assert isinstance(err.value, LockError) and "\n" not in line
        assert f"alice-ci@{socket.gethostname()} pid {got['pid']}" in line
        assert "model 'llama'" in line and f"repository {tmp_path}" in line
        expires = re.search(r"lease expires (\S+);", line)
        assert expires and expires.group(1) >= got["expires"]  # renewed while it waited
        assert f"remove {tmp_path / '.llama.trtbuild-lease'}" in line
    finally:
        holder.kill()


def test_two_processes_take_turns(tmp_path: Path) -> None:
    start = time.time() + 1.0  # both start polling at the same moment
    workers = [Worker("dir", str(tmp_path), "m", "--hold", "1.5", "--timeout", "15",
                      "--start-at", str(start)) for _ in range(2)]
    try:
        assert [w.finish() for w in workers] == [0, 0]
    finally:
        for w in workers:
            w.kill()
    spans = sorted((w.wait_for("acquired")["t"], w.wait_for("releasing")["t"]) for w in workers)
    assert spans[0][1] <= spans[1][0], f"both held the lease at once: {spans}"
    waited = [w for w in workers if any(e["event"] == "waiting" for e in w.events)]
    assert len(waited) == 1 and waited[0].wait_for("waiting")["holder"] is not None


def test_sigkilled_holder_releases_at_once(tmp_path: Path) -> None:
    worker = Worker("dir", str(tmp_path), "m", "--hold", "60", "--ttl", "60")
    try:
        pid = worker.wait_for("acquired")["holder"]["pid"]
        lease = DirLease(tmp_path, "m")
        current = lease.holder()
        assert current is not None and current.pid == pid == worker.proc.pid
        os.kill(pid, signal.SIGKILL)
        worker.proc.wait(10)
    finally:
        worker.kill()
    assert lease.path.exists()  # the dead writer's file stays, but nobody holds it
    assert lease.holder() is None
    t0 = time.monotonic()
    lease.acquire(0, ttl=5)  # no wait at all: the kernel dropped the flock
    assert time.monotonic() - t0 < 0.5 and lease.holder().pid == os.getpid()  # type: ignore[union-attr]
    lease.release()


def test_check_raises_after_the_file_was_removed_and_taken(tmp_path: Path) -> None:
    a, b = DirLease(tmp_path, "m"), DirLease(tmp_path, "m")
    a.acquire(1, ttl=5)
    a.check()
    a.path.unlink()  # what the LeaseHeld hint tells a user to do with a stuck writer
    b.acquire(1, ttl=5)
    with pytest.raises(LeaseLost, match="removed or replaced"):
        a.check()
    with pytest.raises(LeaseLost):
        a.renew()
    a.release()  # must not remove b's file
    assert b.path.exists() and b.holder() is not None
    b.check()
    b.release()
    with pytest.raises(LeaseLost, match="released"):
        b.check()


def test_held_renews_and_releases_on_exception(tmp_path: Path) -> None:
    lease = DirLease(tmp_path, "m")
    with pytest.raises(RuntimeError, match="boom"), held(lease, timeout=1, ttl=0.6,
                                                         renew_every=0.1) as got:
        first = got.holder()
        assert first is not None
        time.sleep(0.9)  # past the ttl: renewed, still ours
        got.check()
        later = got.holder()
        assert later is not None and later.token == first.token
        assert later.expires_ts > first.expires_ts + 0.5
        raise RuntimeError("boom")
    assert not lease.path.exists() and lease.holder() is None
    DirLease(tmp_path, "m").acquire(0)


def test_a_lock_taken_on_an_unlinked_file_is_retried(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The race release() opens: we open the file, its holder unlinks it and unlocks, we lock
    # an inode that is no longer at the path. Such a lock guards nothing; acquire must retry.
    from pipeline.repository import lease as lease_mod

    lease = DirLease(tmp_path, "m")
    real_open, opened = os.open, []

    def open_then_unlinked(path: str | Path, flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        if Path(path) == lease.path and not opened:
            opened.append(fd)
            Path(path).unlink()
        return fd

    monkeypatch.setattr(lease_mod.os, "open", open_then_unlinked)
    lease.acquire(1, ttl=5)
    monkeypatch.undo()
    assert opened and lease.path.exists()
    assert lease.holder() is not None and lease.holder().pid == os.getpid()  # type: ignore[union-attr]
    with pytest.raises(LeaseHeld):
        DirLease(tmp_path, "m").acquire(0)
    lease.release()
