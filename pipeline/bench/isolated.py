"""Run one load point in a child process of its own.

Why: the pipeline's process has other threads (the progress bars refresh ten times a second, a
heartbeat) and a large heap; each of them can hold the GIL for up to the switch interval (5 ms)
while a token's bytes wait, which shows up as TTFT and ITL. The child has nothing but the client.
The parent sends the endpoint, prompts and options as JSON on stdin; the child prints the Point
as JSON on stdout. `python -m pipeline.bench.isolated` is the child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.bench.client import Endpoint, OpenAIEndpoint, TritonEndpoint
from pipeline.bench.harness import Point, measure
from pipeline.errors import ServiceError

KINDS: dict[str, type[OpenAIEndpoint] | type[TritonEndpoint]] = {"openai": OpenAIEndpoint, "triton": TritonEndpoint}


def _spec(endpoint: Endpoint) -> dict[str, Any]:
    for kind, cls in KINDS.items():
        if isinstance(endpoint, cls):
            return {"kind": kind, "base_url": endpoint.base_url, "model": endpoint.model, "name": endpoint.name,
                    "ignore_eos": endpoint.ignore_eos}
    raise TypeError(f"cannot run a {type(endpoint).__name__} in a child process")


def measure_in_child(endpoint: Endpoint, prompts: list[str], *, on_start: Callable[[int], None] | None = None,
                     **kwargs: Any) -> Point:
    """`harness.measure` in a fresh interpreter; the same Point comes back. `on_start(pid)` is
    called once the child runs (benchmarks/client_overhead.py samples its CPU time)."""
    root = str(Path(__file__).resolve().parents[2])  # this checkout's pipeline, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    spec = json.dumps({"endpoint": _spec(endpoint), "prompts": prompts, "kwargs": kwargs})
    with subprocess.Popen([sys.executable, "-m", "pipeline.bench.isolated"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as child:
        if on_start is not None:
            on_start(child.pid)
        out, err = child.communicate(spec)
    if child.returncode != 0:
        tail = err.strip().splitlines()[-1:] or ["no output"]
        raise ServiceError(f"load generator process exited {child.returncode}: {tail[0][:300]}")
    return Point(**json.loads(out))


def main() -> None:
    spec = json.loads(sys.stdin.read())
    e = spec["endpoint"]
    endpoint = KINDS[e.pop("kind")](**e)
    point = measure(endpoint, spec["prompts"], **spec["kwargs"])
    sys.stdout.write(json.dumps(point.to_json()))


if __name__ == "__main__":
    main()
