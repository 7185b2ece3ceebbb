"""The python backend's stub processes of a tritonserver on this host.

A load that hangs (a python stub or `initialize` that never returns) blocks every later load of
that model inside Triton; killing the stubs started for the version directory makes Triton fail
that load instead (pipeline/repository/switch.py does so when a switch times out).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"


def kill_stubs(version_dir: Path) -> list[int]:
    """SIGKILL python-backend stub processes running a model from `version_dir` on this host.

    Triton then fails the pending load of that version ("stub process is not healthy")
    instead of waiting for it forever. Returns the pids killed.
    """
    target = version_dir.resolve()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) < 2 or not argv[0].decode(errors="replace").endswith(STUB_NAME):
            continue
        model_file = Path(argv[1].decode(errors="replace"))
        if model_file.parent.resolve() != target:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
    return killed
