"""A hung test fails alone: pytest-timeout, as pyproject.toml configures it, ends that test and the
run goes on with the next one (the signal method; the thread method would end the session)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

HUNG = """\
import time

import pytest

from tests.fake_docker import ctrl_c_after


def test_hangs():
    time.sleep(60)


@pytest.mark.timeout(4)
def test_hangs_after_using_sigalrm_itself():  # ctrl_c_after gives pytest-timeout its timer back
    with ctrl_c_after(1), pytest.raises(KeyboardInterrupt):
        time.sleep(10)
    time.sleep(60)


def test_after_it():
    assert True
"""


def test_hung_test_fails_alone(tmp_path: Path) -> None:
    pytest.importorskip("pytest_timeout", reason="pytest-timeout is in the dev extra; scripts/setup.sh installs it")
    (tmp_path / "test_hung.py").write_text(HUNG)
    t = time.monotonic()
    # the project's own settings, with the default limit cut from 600 s to 2 s
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-o", "timeout=2", str(tmp_path / "test_hung.py")],
        capture_output=True, text=True, timeout=50, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 failed, 1 passed" in out and "Timeout (>2.0s)" in out and "Timeout (>4.0s)" in out, out
    assert time.monotonic() - t < 40
