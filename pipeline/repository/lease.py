"""One writer per model on a Triton model repository: a lease per model.

Where it lives: `<repo>/.<model>.trtbuild-lease` (directory) or `<prefix>/.<model>.trtbuild-lease`
(S3). Triton takes each top-level *directory* for a model and skips top-level files. Seen
with the nvidia-pytriton wheel's tritonserver 2.51 (December 2026; the integration tests keep
checking it): beside a locked lease file (and a plain `stray-file.txt`), poll mode (1 s polls,
the file coming and going) and explicit mode (load, reload) load the model, the repository
index lists the model only, and the log never names the file. Same for an S3 repository on
SeaweedFS with the lease object at the prefix.

Directory: an `fcntl.flock` on the lease file. The kernel drops it when the holder dies
(SIGKILL included), so a dead writer never blocks anyone; `expires` is written only for
messages. flock is per open file, so it works between threads of one process too. It needs a
local filesystem (or one whose flock is real across hosts).

S3 (SeaweedFS 4.48, measured December 2026 with boto3 1.44, see the integration tests):
`put_object(IfNoneMatch='*')` on an existing key -> 412; `put_object(IfMatch=etag)` and
`delete_object(IfMatch=etag)` with a stale or wrong etag -> 412 and the object unchanged,
with the current etag -> done; `IfMatch` on a missing key -> 412. Two clients racing a
conditional PUT on one etag, or a create on one key: exactly one won, in each of 30 rounds.
With this module, 3 processes taking over one expired lease: one winner in each of 100 rounds;
acquire, renew, check (a HEAD) and release took a median 5-8 ms each. Measured against one S3
gateway (`weed mini`); several gateways must serialise conditional writes too (AWS S3 does).
So:
- acquire = create with IfNoneMatch='*';
- renew = PUT IfMatch=<own etag> (a new `expires`);
- takeover of an expired lease = PUT IfMatch=<the expired lease's etag>: of two takers that
  read the same expired lease only one PUT matches, the other gets 412 and keeps waiting;
- release = DELETE IfMatch=<own etag>, so a writer that lost its lease never deletes the
  successor's.
The etag is the MD5 of the body and every body holds the acquirer's own uuid `token`, so two
writers' bodies never share an etag.

Clocks: a lease is expired when the taker's clock is past the lease's own `expires` plus
`skew_margin` seconds (default 5). The holder stops trusting its lease at `expires` by its
own clock (`check()` raises), so the scheme is safe while the two clocks differ by less than
`skew_margin`. `check()` before each write step is the fence: a step that starts right after
it still has `skew_margin` seconds before anyone may take over; keep steps shorter than that
plus the ttl, or check again.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pipeline.errors import LockError, TrtbuildError, UsageError

log = logging.getLogger(__name__)

SUFFIX = ".trtbuild-lease"
DEFAULT_TTL = 60.0
TTL_ENV = "TRTBUILD_LEASE_TTL"  # seconds; how long a dead S3 writer's lease blocks the next one
DEFAULT_SKEW_MARGIN = 5.0
WAIT_REPORT_S = 10.0  # on_wait is called at least this often (the CLI promises every 15 s)
MAX_POLL_S = 1.0

OnWait = Callable[["Holder | None", float], None]


class LeaseHeld(LockError):  # noqa: N818 - the name the callers and the issue use
    """Another writer holds the lease of this model and did not let go within the timeout."""


class LeaseLost(TrtbuildError):  # noqa: N818 - "raise LeaseLost" reads as what happened
    """This writer's lease expired, was released, removed or taken over: stop writing."""


def lease_name(model: str) -> str:
    """`.<model>.trtbuild-lease`; refuses names that are not one plain path component."""
    if not model or model in (".", "..") or "/" in model or "\0" in model or "\\" in model:
        raise UsageError(f"model name {model!r} is not a plain directory name",
                         hint="use the model's directory name in the repository")
    return f".{model}{SUFFIX}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def default_owner() -> str:
    """TRTBUILD_LEASE_OWNER, else the CI job (GitHub run, GitLab job), else the user name."""
    if os.environ.get("TRTBUILD_LEASE_OWNER"):
        return os.environ["TRTBUILD_LEASE_OWNER"]
    if os.environ.get("GITHUB_RUN_ID"):
        return f"github-run-{os.environ['GITHUB_RUN_ID']}"
    if os.environ.get("CI_JOB_ID"):
        return f"ci-job-{os.environ['CI_JOB_ID']}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


@dataclass(frozen=True)
class Holder:
    owner: str
    host: str
    pid: int
    acquired: str  # UTC ISO 8601
    expires: str  # UTC ISO 8601, by the holder's clock
    token: str  # uuid4 of this acquisition

    @classmethod
    def new(cls, ttl: float) -> Holder:
        now = time.time()
        return cls(default_owner(), socket.gethostname(), os.getpid(), _iso(now), _iso(now + ttl),
                   str(uuid.uuid4()))

    def extended(self, ttl: float) -> Holder:
        return replace(self, expires=_iso(time.time() + ttl))

    @property
    def expires_ts(self) -> float:
        return _ts(self.expires)

    def describe(self) -> str:
        return f"{self.owner}@{self.host} (pid {self.pid}) since {self.acquired}"

    def to_json(self, **extra: str) -> bytes:
        return json.dumps({**asdict(self), **extra}, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Holder | None:
        """None for an empty, torn or foreign body (readers must tolerate one being written)."""
        try:
            raw = json.loads(data)
            h = cls(**{f.name: raw[f.name] for f in fields(cls)})
            _ts(h.expires), _ts(h.acquired), int(h.pid)
        except (ValueError, KeyError, TypeError):
            return None
        return h


class Lease(Protocol):
    model: str
    location: str  # the lease file or s3:// key, for messages

    def acquire(self, timeout: float, *, on_wait: OnWait | None = None,
                ttl: float = DEFAULT_TTL) -> Holder: ...
    def renew(self) -> None: ...
    def release(self) -> None: ...
    def holder(self) -> Holder | None: ...
    def check(self) -> None: ...


def lease_ttl() -> float:
    """The lease ttl: TRTBUILD_LEASE_TTL, else 60 s. A holder renews every ttl/3, so a short ttl
    costs requests; a long one keeps a crashed writer's S3 lease in the way longer."""
    raw = os.environ.get(TTL_ENV, "").strip()
    try:
        ttl = float(raw) if raw else DEFAULT_TTL
    except ValueError:
        raise UsageError(f"{TTL_ENV}={raw!r}: not a number of seconds") from None
    if ttl < 1:
        raise UsageError(f"{TTL_ENV}={raw!r}: must be at least 1 second")
    return ttl


def waiting_line(model: str, holder: Holder | None, waited: float) -> str:
    """The progress line a CLI prints from `on_wait`."""
    who = holder.describe() if holder else "another writer"
    return f"waiting for lease on {model} held by {who} ({waited:.0f}s so far)"


class _Base:
    model: str
    location: str
    repository: str

    def __init__(self) -> None:
        self._mine: Holder | None = None
        self._ttl = DEFAULT_TTL
        self._lost: str | None = None
        self._mutex = threading.Lock()  # renew thread vs check/release

    # each backend: one non-blocking attempt -> (taken, the holder seen if not taken)
    def _try_take(self, holder: Holder) -> tuple[bool, Holder | None]:
        raise NotImplementedError

    def _fix(self, holder: Holder | None) -> str:
        raise NotImplementedError

    def acquire(self, timeout: float, *, on_wait: OnWait | None = None,
                ttl: float = DEFAULT_TTL) -> Holder:
        """Take the lease, polling with backoff for up to `timeout` s; LeaseHeld after that."""
        if self._mine is not None:
            raise UsageError(f"lease on {self.model} is already held by this object")
        if ttl <= 0 or timeout < 0:
            raise UsageError(f"lease ttl must be > 0 and timeout >= 0 (got {ttl}, {timeout})")
        self._ttl = ttl
        start = time.monotonic()
        delay, reported, quick = 0.05, -WAIT_REPORT_S, 3
        while True:
            mine = Holder.new(ttl)
            taken, seen = self._try_take(mine)
            if taken:
                self._mine, self._lost = mine, None
                return mine
            if seen is None and quick > 0:
                quick -= 1  # released (or replaced) under our feet: try again now, even at timeout 0
                continue
            waited = time.monotonic() - start
            if waited >= timeout:
                raise self._held_error(seen, waited)
            if on_wait is not None and waited - reported >= WAIT_REPORT_S:
                on_wait(seen, waited)
                reported = waited
            time.sleep(min(delay, timeout - waited))
            delay = min(delay * 1.5, MAX_POLL_S)

    def _held_error(self, holder: Holder | None, waited: float) -> LeaseHeld:
        who = (f"{holder.owner}@{holder.host} pid {holder.pid} since {holder.acquired}, "
               f"lease expires {holder.expires}") if holder else "another writer (its lease was unreadable or changing)"
        return LeaseHeld(
            f"model '{self.model}' in repository {self.repository} is being written by {who}; "
            f"gave up after {waited:.1f}s", hint=self._fix(holder))

    def check(self) -> None:
        """Raise LeaseLost unless this object still holds the lease (call before each write)."""
        with self._mutex:
            mine = self._mine
            if mine is None:
                raise LeaseLost(f"no lease held on model '{self.model}' "
                                f"({self._lost or 'not acquired'})")
            self._lost = self._still_mine(mine)
            if self._lost is not None:
                raise LeaseLost(f"lease on model '{self.model}' ({self.location}) lost: "
                                f"{self._lost}", hint="stop writing; run again to take it anew")

    def _still_mine(self, mine: Holder) -> str | None:
        raise NotImplementedError


class DirLease(_Base):
    """`<root>/.<model>.trtbuild-lease`, flock-ed while held, holder JSON inside."""

    def __init__(self, root: Path, model: str) -> None:
        super().__init__()
        self.root, self.model = Path(root), model
        self.path = self.root / lease_name(model)
        self.location, self.repository = str(self.path), str(self.root)
        self._fd: int | None = None

    def _try_take(self, holder: Holder) -> tuple[bool, Holder | None]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise UsageError(f"model repository {self.root} is not a directory",
                             hint="create it or fix the repository path") from None
        except PermissionError:
            raise TrtbuildError(f"cannot create the lease file {self.path}: permission denied",
                                hint="a writer needs write access to the repository directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False, self.holder()
        # The previous holder may have unlinked the file between our open and our lock: a
        # lock on an unlinked inode guards nothing, so it must still be the file at the path.
        if not self._same_file(fd):
            os.close(fd)
            return False, None
        self._write(fd, holder)
        self._fd = fd
        return True, None

    def _same_file(self, fd: int) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _write(self, fd: int, holder: Holder) -> None:
        # In place (the file is the lock, a rename would make a new one); readers that catch
        # it half-written get None from Holder.from_json and read again.
        data = holder.to_json(model=self.model)
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def holder(self) -> Holder | None:
        """The live holder, or None when nobody holds the lock (whatever the file still says)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                return None  # the lock is free: what the file says is a dead writer's
            for _ in range(20):
                h = Holder.from_json(os.pread(fd, 4096, 0))
                if h is not None:
                    return h
                time.sleep(0.01)  # the holder is between locking and writing
            return None
        finally:
            os.close(fd)

    def renew(self) -> None:
        with self._mutex:
            if self._mine is None or self._fd is None or self._lost is not None:
                raise LeaseLost(f"no lease held on model '{self.model}' ({self._lost or 'released'})")
            if not self._same_file(self._fd):
                self._lost = f"{self.path} was removed or replaced"
                raise LeaseLost(f"lease on model '{self.model}' lost: {self._lost}")
            self._mine = self._mine.extended(self._ttl)
            self._write(self._fd, self._mine)

    def _still_mine(self, mine: Holder) -> str | None:
        # No expiry here: the flock is held until this process lets go or dies.
        if self._fd is None or not self._same_file(self._fd):
            return f"{self.path} was removed or replaced by another writer"
        return None

    def release(self) -> None:
        with self._mutex:
            fd, self._fd, self._mine = self._fd, None, None
            if fd is None:
                return
            self._lost = "released"
            try:
                # Unlink only our own file (someone may have removed ours and taken a new one),
                # and unlink before unlocking: a waiter that locked the old inode sees it gone.
                if self._same_file(fd):
                    self.path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    def _fix(self, holder: Holder | None) -> str:
        return (f"wait for it, or if that writer is dead (its lock would be free already unless "
                f"another process inherited it) remove {self.path}")


@contextlib.contextmanager
def held(lease: Lease, timeout: float = 600.0, ttl: float = DEFAULT_TTL,
         renew_every: float | None = None, *, on_wait: OnWait | None = None) -> Iterator[Lease]:
    """Acquire, renew in a daemon thread every `renew_every` s (ttl/3), release on exit."""
    lease.acquire(timeout, on_wait=on_wait, ttl=ttl)
    every = ttl / 3 if renew_every is None else renew_every
    stop = threading.Event()

    def renew_loop() -> None:
        while not stop.wait(every):
            try:
                lease.renew()
            except LeaseLost as e:
                log.error("%s", e)
                return  # check() raises from now on
            except Exception as e:  # a network error: retry next tick; check() sees expiry
                log.warning("renewing lease on %s failed: %s", lease.model, e)

    thread = threading.Thread(target=renew_loop, name=f"lease-renew-{lease.model}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=max(every, 5.0))
        lease.release()
