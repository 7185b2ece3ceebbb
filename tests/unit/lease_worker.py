"""A process that takes a model's lease, holds it a while and releases it, for the lease tests.

python -m tests.unit.lease_worker dir ROOT MODEL [--hold S] [--timeout S] [--ttl S]
python -m tests.unit.lease_worker s3 BUCKET PREFIX MODEL ... (endpoint and keys from AWS_* env)

Prints one JSON line per event on stdout (flushed): waiting, acquired (with the holder),
released, or held (LeaseHeld's line, exit 3). Holds with `held()`, so it renews while alive.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.repository.lease import DirLease, Holder, Lease, LeaseHeld, held
from pipeline.repository.lease_s3 import S3Lease

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """The test side: start a worker process and read its events with timeouts."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.lease_worker", *args], cwd=ROOT,
            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.events: list[dict[str, Any]] = []
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(json.loads(line))
        self._q.put(None)

    def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first event named `event` (earlier ones are kept in .events)."""
        for seen in self.events:
            if seen["event"] == event:
                return seen
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {event!r} from worker; saw {self.events}") from None
            if got is None:
                raise RuntimeError(f"worker exited ({self.proc.wait()}) before {event!r}; "
                                   f"saw {self.events}")
            self.events.append(got)
            if got["event"] == event:
                return got

    def finish(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        while (got := self._q.get(timeout=5)) is not None:
            self.events.append(got)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **data}), flush=True)


def s3_client() -> Any:
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["dir", "s3"])
    ap.add_argument("where", nargs="+")
    ap.add_argument("--hold", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--ttl", type=float, default=2.0)
    ap.add_argument("--renew-every", type=float, default=None)
    ap.add_argument("--skew-margin", type=float, default=0.5)
    ap.add_argument("--start-at", type=float, default=0.0, help="time.time() to start at")
    a = ap.parse_args(argv)
    lease: Lease
    if a.kind == "dir":
        root, model = a.where
        lease = DirLease(Path(root), model)
    else:
        bucket, prefix, model = a.where
        lease = S3Lease(s3_client(), bucket, prefix, model, skew_margin=a.skew_margin)
    time.sleep(max(0.0, a.start_at - time.time()))

    def on_wait(holder: Holder | None, waited: float) -> None:
        emit("waiting", holder=asdict(holder) if holder else None, waited=waited)

    try:
        with held(lease, timeout=a.timeout, ttl=a.ttl, renew_every=a.renew_every,
                  on_wait=on_wait):
            mine = lease.holder()
            emit("acquired", holder=asdict(mine) if mine else None)
            time.sleep(a.hold)
            lease.check()
            emit("releasing")
    except LeaseHeld as e:
        emit("held", message=e.one_line())
        return 3
    emit("released")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
