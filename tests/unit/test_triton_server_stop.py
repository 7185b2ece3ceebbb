"""A tritonserver that is still starting when Ctrl-C arrives is stopped, not left running.

It runs in its own session (so a Ctrl-C meant for trtbuild is not its): stopping it is our job.
A stand-in binary (never ready) shows it without a real tritonserver.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from pipeline.triton.server import TritonInstall, TritonServer
from tests.fake_docker import alive, kill


def test_interrupted_start_stops_the_server(tmp_path: Path) -> None:
    pidfile = tmp_path / "server.pid"
    binary = tmp_path / "tritonserver"
    binary.write_text(f"#!{sys.executable}\nimport os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                      "time.sleep(600)\n")
    binary.chmod(0o755)
    (tmp_path / "repo").mkdir()
    server = TritonServer(TritonInstall(binary=binary, source="explicit"), log_path=tmp_path / "triton.log",
                          startup_timeout=60)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            server.start(tmp_path / "repo")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not alive(pid), "tritonserver kept running after Ctrl-C during its start"
    finally:
        kill(pid)
