"""A tritonserver that is still starting when Ctrl-C arrives is stopped, not left running.

It runs in its own session (so a Ctrl-C meant for trtbuild is not its): stopping it is our job.
A stand-in binary (never ready) shows it without a real tritonserver.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.triton.server import TritonInstall, TritonServer
from tests.fake_docker import assert_gone, ctrl_c_after


def test_interrupted_start_stops_the_server(tmp_path: Path) -> None:
    pidfile = tmp_path / "server.pid"
    binary = tmp_path / "tritonserver"
    binary.write_text(f"#!{sys.executable}\nimport os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                      "time.sleep(600)\n")
    binary.chmod(0o755)
    (tmp_path / "repo").mkdir()
    server = TritonServer(TritonInstall(binary=binary, source="explicit"), log_path=tmp_path / "triton.log",
                          startup_timeout=60)

    with ctrl_c_after(2), pytest.raises(KeyboardInterrupt):
        server.start(tmp_path / "repo")
    assert_gone(int(pidfile.read_text()), "tritonserver kept running after Ctrl-C during its start", wait=10)
