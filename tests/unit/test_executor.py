"""The stage executor: another interpreter or a container prefix, JSON spec/result, timeouts."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import ExecutorError
from pipeline.recipe.schema import Executor
from pipeline.runner.executor import command_argv, run_command, run_function, this_interpreter


def test_inprocess_call() -> None:
    out = run_function("tests.unit.executor_funcs:where", {"x": 2}, executor=Executor(),
                       log=Path("/dev/null"))
    assert out["pid"] == os.getpid() and out["double"] == 4


def test_subprocess_under_another_interpreter(tmp_path: Path) -> None:
    out = run_function("tests.unit.executor_funcs:where", {"x": 21}, executor=this_interpreter(),
                       log=tmp_path / "log", cwd=Path(__file__).resolve().parents[2])
    assert out["pid"] != os.getpid() and out["double"] == 42


def test_subprocess_error_crosses_boundary(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="ValueError: planted failure"):
        run_function("tests.unit.executor_funcs:boom", {}, executor=this_interpreter(),
                     log=tmp_path / "log", cwd=Path(__file__).resolve().parents[2])


def test_timeout_kills_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    ex = Executor(kind="subprocess", python=sys.executable, timeout_s=2)
    start = time.monotonic()
    with pytest.raises(ExecutorError, match="timed out after 2s and was killed"):
        run_function("tests.unit.executor_funcs:hang", {"seconds": 60, "pidfile": str(pidfile)},
                     executor=ex, log=tmp_path / "log", cwd=Path(__file__).resolve().parents[2])
    assert time.monotonic() - start < 20
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_command_not_found_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="no-such-tool: command not found"):
        run_command(["no-such-tool", "--x"], executor=Executor(), log=tmp_path / "log")


def test_failed_command_reports_code_and_log_tail(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match=r"exited with code 3: oops") as e:
        run_command([sys.executable, "-c", "import sys; print('oops'); sys.exit(3)"],
                    executor=Executor(), log=tmp_path / "log")
    assert e.value.returncode == 3


def test_argv_for_venv_and_container(tmp_path: Path) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "trtllm-build").touch()
    ex = Executor(kind="subprocess", python=str(venv / "python"))
    assert command_argv(["trtllm-build", "--x"], ex) == [str(venv / "trtllm-build"), "--x"]
    assert command_argv(["python", "-m", "m"], ex) == [str(venv / "python"), "-m", "m"]
    c = Executor(kind="container", image="nvcr.io/nvidia/tensorrt-llm/release:1.2.0",
                 command_prefix=["docker", "run", "--rm", "--gpus", "all"])
    assert command_argv(["trtllm-build", "--x"], c) == [
        "docker", "run", "--rm", "--gpus", "all", "nvcr.io/nvidia/tensorrt-llm/release:1.2.0",
        "trtllm-build", "--x"]


def test_container_prefix_runs_for_real(tmp_path: Path) -> None:
    """A command prefix (here `env`, standing in for `docker run ... IMAGE`) wraps the worker."""
    ex = Executor(kind="container", image="TRTBUILD_IN_CONTAINER=1", command_prefix=["env"])
    out = run_function("tests.unit.executor_funcs:where", {"x": 1}, executor=ex, log=tmp_path / "log",
                       cwd=Path(__file__).resolve().parents[2])
    assert out["double"] == 2 and out["pid"] != os.getpid()
