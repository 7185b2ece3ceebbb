"""scripts/gpu_check.sh without a GPU: a clear message, a summary saying so, and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # hiding every GPU gives the no-GPU path on any host
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_no_gpu_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    res = run(str(tmp_path / "summary.json"))
    assert res.returncode == 2, res.stderr
    assert "gpu_check: no CUDA GPU visible to torch" in res.stderr and "run it on the GPU host" in res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is False and "no CUDA GPU" in summary["errors"][0]
    assert summary["versions"]["nvidia-modelopt"] != "absent"
    assert json.loads(res.stdout) == summary


def test_usage_without_an_output_path() -> None:
    res = run()
    assert res.returncode == 64 and "usage:" in res.stderr
