"""Containers started with `docker run`: --init and a name, and stopped by that name.

The fake docker (tests/fake_docker.py) starts a "container" whose PID 1 ignores SIGTERM and lives
outside the client's process group, as a real one does: signalling the client leaves it running.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import ExecutorError, ServiceError
from pipeline.recipe.schema import Executor
from pipeline.runner.executor import run_command, run_function
from pipeline.util.container import is_container_run, named_run
from pipeline.util.proc import start_server, stop_process_group
from tests import fake_docker
from tests.fake_docker import FakeDocker, alive, ctrl_c_after

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[FakeDocker]:
    fake = fake_docker.install(tmp_path)
    yield fake
    fake.kill_all()


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_detects_docker_and_podman_runs_only() -> None:
    assert is_container_run(["docker", "run", "img"])
    assert is_container_run(["/usr/bin/podman", "run", "--rm", "img"])
    assert not is_container_run(["docker", "exec", "c", "ls"])
    assert not is_container_run(["trtllm-serve", "run"])
    assert not is_container_run(["docker"])


def test_run_gets_init_and_a_name_right_after_run() -> None:
    argv, c = named_run(["docker", "run", "--rm", "--gpus", "all", "img", "trtllm-serve", "--name", "x"],
                        "trtllm-serve")
    assert c is not None and c.name.startswith("trtbuild-trtllm-serve-")
    assert argv == ["docker", "run", "--init", "--name", c.name, "--rm", "--gpus", "all", "img", "trtllm-serve",
                    "--name", "x"]
    _, c2 = named_run(["docker", "run", "img"], "trtllm-serve")
    assert c2 is not None and c2.name != c.name


def test_a_name_and_init_in_the_prefix_are_kept() -> None:
    argv, c = named_run(["docker", "run", "--init", "--name=mine", "-it", "img", "cmd"], "x")
    assert c is not None and c.name == "mine"
    assert argv == ["docker", "run", "--init", "--name=mine", "-it", "img", "cmd"]
    argv, c = named_run(["podman", "run", "-e", "A=1", "--name", "theirs", "img"], "x")
    assert c is not None and (c.name, c.client) == ("theirs", "podman")
    assert argv == ["podman", "run", "--init", "-e", "A=1", "--name", "theirs", "img"]


def test_role_becomes_a_valid_container_name() -> None:
    _, c = named_run(["docker", "run", "img"], "pipeline.backends:warmup_load")
    assert c is not None and c.name.startswith("trtbuild-pipeline-backends-warmup-load-")


def test_env_keys_are_passed_into_the_container() -> None:
    argv, c = named_run(["docker", "run", "-e", "B", "img", "python3"], "w", env_keys=["PYTHONPATH", "B"])
    assert c is not None  # B is passed by the prefix already
    assert argv == ["docker", "run", "--init", "--name", c.name, "-e", "PYTHONPATH", "-e", "B", "img", "python3"]
    plain, c = named_run(["python3", "-V"], "w", env_keys=["PYTHONPATH"])
    assert plain == ["python3", "-V"] and c is None


def test_stopping_a_server_stops_its_container(tmp_path: Path, docker: FakeDocker) -> None:
    proc = start_server([str(docker.exe), "run", "--rm", "img", "trtllm-serve"], tmp_path / "srv.log",
                        ready=lambda: bool(docker.containers()), timeout=20, what="fake server", interval=0.05,
                        role="trtllm-serve")
    name, pid = docker.wait_for_container()
    stop_process_group(proc, grace=1)
    assert gone(pid), "the container's PID 1 ignores SIGTERM: it is still running after the client was stopped"
    assert name.startswith("trtbuild-trtllm-serve-")
    calls = docker.calls()
    assert calls[0][:4] == ["run", "--init", "--name", name]
    assert ["stop", "-t", "1", name] in calls and ["rm", "-f", name] in calls


def test_container_is_removed_when_the_client_already_died(tmp_path: Path, docker: FakeDocker) -> None:
    proc = start_server([str(docker.exe), "run", "--rm", "img"], tmp_path / "srv.log",
                        ready=lambda: bool(docker.containers()), timeout=20, what="fake server", interval=0.05)
    name, pid = docker.wait_for_container()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stop_process_group(proc, grace=1)
    assert gone(pid)
    assert ["rm", "-f", name] in docker.calls()


def test_executor_timeout_stops_the_container(tmp_path: Path, docker: FakeDocker) -> None:
    ex = Executor(kind="container", image="img", command_prefix=[str(docker.exe), "run", "--rm"], timeout_s=2)
    with pytest.raises(ExecutorError, match="timed out after 2s"):
        run_command(["trtllm-build", "--x"], executor=ex, log=tmp_path / "log")
    assert docker.containers() == {}, "the container outlived the timed-out stage"
    names = [c[3] for c in docker.calls() if c[:3] == ["run", "--init", "--name"]]
    assert len(names) == 1 and names[0].startswith("trtbuild-trtllm-build-")
    assert ["rm", "-f", names[0]] in docker.calls()


def test_executor_interrupt_stops_the_container(tmp_path: Path, docker: FakeDocker) -> None:
    ex = Executor(kind="container", image="img", command_prefix=[str(docker.exe), "run", "--rm"], timeout_s=60)

    with ctrl_c_after(2), pytest.raises(KeyboardInterrupt):
        run_command(["sleep", "600"], executor=ex, log=tmp_path / "log")
    assert docker.containers() == {}, "the container outlived Ctrl-C"


def test_function_runs_inside_the_container_with_its_environment(tmp_path: Path, docker: FakeDocker) -> None:
    """The worker needs PYTHONPATH inside the container; the client's own environment stays outside."""
    ex = Executor(kind="container", image="img", command_prefix=[str(docker.exe), "run", "--rm"])
    out = run_function("tests.unit.executor_funcs:where", {"x": 3}, executor=ex, log=tmp_path / "log",
                       cwd=tmp_path)
    assert out["double"] == 6
    run = next(c for c in docker.calls() if c[0] == "run")
    assert run[run.index("-e") + 1] == "PYTHONPATH"
    assert docker.containers() == {}


def test_group_members_that_outlive_a_failed_server_are_stopped(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"open({str(pidfile)!r}, 'w').write(str(c.pid)); sys.exit(1)")
    with pytest.raises(ServiceError, match="exited before it was ready"):
        start_server([sys.executable, "-c", code], tmp_path / "srv.log", ready=lambda: False, timeout=20,
                     what="leaky server", interval=0.05)
    child = int(pidfile.read_text())
    try:
        assert gone(child), "a child of the server outlived it"
    finally:
        fake_docker.kill(child)


def test_a_finished_command_leaves_no_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"open({str(pidfile)!r}, 'w').write(str(c.pid))")
    run_command([sys.executable, "-c", code], executor=Executor(), log=tmp_path / "log")
    child = int(pidfile.read_text())
    try:
        assert gone(child), "a child of the command outlived its stage"
    finally:
        fake_docker.kill(child)


def test_plain_commands_are_not_touched(tmp_path: Path) -> None:
    r = run_command([sys.executable, "-c", "print('hi')"], executor=Executor(), log=tmp_path / "log")
    assert r.argv == [sys.executable, "-c", "print('hi')"]


def test_ctrl_c_while_a_server_starts_stops_its_container(tmp_path: Path, docker: FakeDocker) -> None:
    def ready() -> bool:
        if docker.containers():
            raise KeyboardInterrupt  # Ctrl-C while waiting for readiness
        return False

    with pytest.raises(KeyboardInterrupt):
        start_server([str(docker.exe), "run", "--rm", "img"], tmp_path / "srv.log", ready=ready, timeout=20,
                     what="fake server", interval=0.05)
    assert docker.containers() == {}, "the server's container outlived Ctrl-C during its start"
