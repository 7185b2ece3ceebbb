"""The baseline side of lm-eval tasks, kept between runs.

The baseline serves the unquantized source, so for one source, task list, harness version and
server its per-document outcomes never change however often the candidate does (another
quantization, a rebuilt engine, `--record-references`). On a GPU host that saves a vLLM start
and a full pass of every task. An existing endpoint (`kind: endpoint`) is never cached: what it
serves can change behind its URL. Writes are atomic; an unreadable entry is recomputed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.eval.baseline_cache import digest
from pipeline.eval.lmeval import Sample, SideRun
from pipeline.util import atomic

VERSION = 1


def harness_version(python: str) -> str:
    """lm-eval's version in the interpreter that runs it ('unknown' when it cannot tell)."""
    code = "import importlib.metadata as m; print(m.version('lm-eval'))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def path_for(root: Path, key: dict[str, Any]) -> Path:
    return root / f"{digest({'version': VERSION, **key})}.json"


def load(path: Path) -> SideRun | None:
    try:
        data = json.loads(path.read_text())
        samples = {name: {k: Sample(**s) for k, s in docs.items()} for name, docs in data["samples"].items()}
        return SideRun(float(data["seconds"]), samples, dict(data["output_types"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, side: SideRun) -> None:
    data = {"seconds": side.seconds, "output_types": side.output_types,
            "samples": {name: {k: asdict(s) for k, s in docs.items()} for name, docs in side.samples.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(data, sort_keys=True))
