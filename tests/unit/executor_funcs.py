"""Functions the executor tests call in another interpreter."""

from __future__ import annotations

import os
import sys
import time


def where(x: int) -> dict[str, object]:
    return {"pid": os.getpid(), "python": sys.executable, "double": 2 * x}


def boom() -> None:
    raise ValueError("planted failure")


def hang(seconds: float, pidfile: str) -> None:
    import subprocess

    # a child in the same process group must die with the stage too
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pidfile, "w") as f:  # noqa: PTH123
        f.write(str(child.pid))
    time.sleep(seconds)
