"""TensorRT and TensorRT-LLM versions are read where the build runs: under the stage's executor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.backends.trtllm_versions import PROBE, probe
from pipeline.recipe.schema import Executor
from pipeline.runner.executor import run_function

ROOT = Path(__file__).resolve().parents[2]


def interpreter_seeing(tmp: Path, site: Path) -> Path:
    python = tmp / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


def test_versions_from_dist_info_under_the_executor(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for dist, version in (("tensorrt", "10.13.3"), ("tensorrt_llm", "1.2.0")):
        (site / f"{dist}-{version}.dist-info").mkdir(parents=True)
        (site / f"{dist}-{version}.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n")
    ex = Executor(kind="subprocess", python=str(interpreter_seeing(tmp_path, site)))
    got = run_function(PROBE, {}, executor=ex, log=tmp_path / "log", cwd=ROOT)
    assert got == {"tensorrt": "10.13.3", "tensorrt_llm": "1.2.0"}
    assert probe() != got  # this interpreter sees neither


def test_module_version_when_there_is_no_dist_info(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "tensorrt").mkdir(parents=True)
    (site / "tensorrt" / "__init__.py").write_text("__version__ = '10.14.1.48'\n")
    ex = Executor(kind="subprocess", python=str(interpreter_seeing(tmp_path, site)))
    got = run_function(PROBE, {}, executor=ex, log=tmp_path / "log", cwd=ROOT)
    assert got == {"tensorrt": "10.14.1.48", "tensorrt_llm": None}


def test_detected_runtime_reads_versions_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader of the key (a GPU host's detected runtime) and its writer (the build) agree: here
    TensorRT comes as the CUDA-specific wheel only, as pip installs it from NVIDIA's index."""
    import torch

    from pipeline.bundle import detect_runtime

    info = tmp_path / "tensorrt_cu12-10.13.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorrt_cu12\nVersion: 10.13.3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    facts = detect_runtime()
    assert facts is not None and (facts.gpu, facts.sm) == ("h100", 90)
    assert facts.tensorrt == probe()["tensorrt"] == "10.13.3"
