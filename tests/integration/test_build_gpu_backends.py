"""The build stage for the GPU backends on this CPU machine: real ModelOpt exports, then
trtllm-build (the strict stand-in that checks argv against TensorRT-LLM 1.2's flag list) and
the PyTorch-backend options. The manifest's compatibility key comes from the engine's config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.bundle import compatibility_problems, facts_for_target, load_bundle
from tests.conftest import ROOT
from tests.tiny_model import save_tiny_checkpoint

# longer than the 600 s default (pyproject.toml): the build fixture allows its run 600 s
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
STAND_IN = ROOT / "tests/data/trtllm"


def recipe(tmp: Path, backend: str, gpu: str, algo: str, kv: str, tp: int,
           executor: dict[str, object] | None = None) -> Path:
    data = {
        "name": f"tiny-{backend}", "source": {"path": "src", "dtype": "float32"},
        "target": {"gpu": gpu, "tensor_parallel": tp},
        "quantize": {"algo": algo, "kv_cache": kv, "calibration": {"samples": 4, "seq_len": 32}},
        "build": {"backend": backend, "max_batch_size": 8, "max_seq_len": 256, "max_num_tokens": 512,
                  "tensorrt": {"timing_cache": str(tmp / "timing.cache")}},
        "gates": {"accuracy": {"enabled": False}, "throughput": {"enabled": False}},
        "release": {"enabled": False, "model_name": "tiny"}, "publish": {"enabled": False},
    }
    if executor is not None:  # where trtllm-build or the warm-up runs
        data["build"].setdefault(backend, {})["executor"] = executor  # type: ignore[index, attr-defined]
    p = tmp / f"{backend}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gpu-backends")
    save_tiny_checkpoint(d / "src")
    return d


def run(path: Path, artifacts: Path) -> dict[str, object]:
    env = {**os.environ, "PATH": f"{STAND_IN}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "run", str(path), "--json", "--artifacts",
                        str(artifacts)], capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(json.loads(r.stdout))


def bundle_of(summary: dict[str, object]) -> Path:
    build = next(s for s in summary["stages"] if s["name"] == "build")  # type: ignore[attr-defined, index]
    return Path(build["outputs"]["bundle"])


def test_tensorrt_engine_bundle_tp2(workspace: Path) -> None:
    summary = run(recipe(workspace, "tensorrt", "h100", "fp8", "fp8", 2), workspace / "artifacts")
    bundle = load_bundle(bundle_of(summary))
    files = {f["path"] for f in bundle.manifest["files"]}
    assert {"engine/config.json", "engine/rank0.engine", "engine/rank1.engine", "tokenizer/tokenizer.json"} <= files
    c = bundle.compatibility
    assert (c["backend"], c["gpu"], c["sm"], c["tensor_parallel"]) == ("tensorrt", "h100", 90, 2)
    assert c["tensorrt_llm"].startswith("1.2")
    assert (bundle.dir.parent / "trtllm-build.log").is_file(), "the build log is kept with the stage output"
    assert compatibility_problems(c, facts_for_target("h100")) == []
    assert "sm90" in compatibility_problems(c, facts_for_target("b200"))[0]


def test_pytorch_bundle_options(workspace: Path) -> None:
    summary = run(recipe(workspace, "pytorch", "b200", "nvfp4", "fp8", 1), workspace / "artifacts")
    bundle = load_bundle(bundle_of(summary))
    options = yaml.safe_load((bundle.dir / "llm_api_options.yaml").read_text())
    assert options["max_batch_size"] == 8 and options["kv_cache_config"]["dtype"] == "fp8"
    verified = bundle.manifest["provenance"]["verified_on_runtime"]
    assert isinstance(verified, str) and verified.startswith("not verified on a runtime")
    assert (bundle.dir / "checkpoint/hf_quant_config.json").is_file()


# --------------------------------------------------------------------------- versions from the executor
FAKE_TRTLLM = """
import json, os, sys
from pathlib import Path
__version__ = "1.2.0"


class SamplingParams:
    def __init__(self, max_tokens):
        self.max_tokens = max_tokens


class LLM:
    def __init__(self, model, **options):
        assert Path(model, "config.json").is_file(), model
        Path(os.environ["FAKE_TRTLLM_MARK"]).write_text(json.dumps({"pid": os.getpid(), "python": sys.executable}))

    def generate(self, prompts, params):
        out = type("Out", (), {"token_ids": [1, 2, 3, 4][:params.max_tokens], "text": " Paris"})()
        return [type("Result", (), {"outputs": [out]})()]

    def shutdown(self):
        pass
"""


def trt_environment(tmp: Path, *, with_module: bool = False, tensorrt: str = "10.13.3") -> Path:
    """An interpreter (a wrapper script) that sees TensorRT `tensorrt` and TensorRT-LLM 1.2.0 installed.

    Only their dist-info (what pip leaves) is there, and with `with_module` a tensorrt_llm package
    whose LLM records where it ran; this process sees none of it.
    """
    site = tmp / "site"
    for dist, version in (("tensorrt", tensorrt), ("tensorrt_llm", "1.2.0")):
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n")
    if with_module:
        (site / "tensorrt_llm").mkdir(exist_ok=True)
        (site / "tensorrt_llm" / "__init__.py").write_text(FAKE_TRTLLM)
    python = tmp / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


def check(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "check", str(bundle), *args],
                          capture_output=True, text=True, cwd=ROOT, check=False, timeout=120)


def refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("trtbuild: error: ")]
    assert len(errors) == 1 and r.stderr.strip().endswith(errors[0]) and "Traceback" not in r.stderr, r.stderr
    assert all(w in errors[0] for w in words), errors[0]


def test_tensorrt_versions_come_from_the_build_executor(workspace: Path, tmp_path: Path) -> None:
    python = trt_environment(tmp_path)
    ex = {"kind": "subprocess", "python": str(python)}
    summary = run(recipe(workspace, "tensorrt", "h100", "fp8", "fp8", 1, executor=ex), tmp_path / "artifacts")
    bundle = bundle_of(summary)
    c = load_bundle(bundle).compatibility
    assert (c["tensorrt"], c["tensorrt_llm"]) == ("10.13.3", "1.2.0")
    ok = check(bundle, "--target", "h100", "--tensorrt", "10.13.3", "--tensorrt-llm", "1.2.0")
    assert ok.returncode == 0, ok.stderr
    refused(check(bundle, "--target", "h100", "--tensorrt", "10.11.0"), "TensorRT 10.13.3", "TensorRT 10.11.0")
    refused(check(bundle, "--target", "h100", "--tensorrt-llm", "1.1.0"), "TensorRT-LLM 1.2.0", "TensorRT-LLM 1.1.0")


def test_pytorch_warmup_and_versions_run_under_the_executor(workspace: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    mark = tmp_path / "warmup.json"
    monkeypatch.setenv("FAKE_TRTLLM_MARK", str(mark))
    python = trt_environment(tmp_path, with_module=True)
    ex = {"kind": "subprocess", "python": str(python)}
    summary = run(recipe(workspace, "pytorch", "b200", "nvfp4", "fp8", 1, executor=ex), tmp_path / "artifacts")
    bundle = bundle_of(summary)
    b = load_bundle(bundle)
    assert (b.compatibility["tensorrt"], b.compatibility["tensorrt_llm"]) == ("10.13.3", "1.2.0")
    assert b.manifest["provenance"]["verified_on_runtime"] is True
    assert mark.is_file(), "tensorrt_llm.LLM was not called: only the executor's interpreter can import it"
    refused(check(bundle, "--target", "b200", "--tensorrt-llm", "1.1.0"), "TensorRT-LLM 1.2.0", "1.1.0")


def test_another_build_environment_is_another_build(workspace: Path, tmp_path: Path) -> None:
    """The executor names the TensorRT environment: a bundle built in one is not reused for another."""
    artifacts = tmp_path / "artifacts"
    first = trt_environment(tmp_path / "a")
    run(recipe(workspace, "tensorrt", "h100", "fp8", "fp8", 1, executor={"kind": "subprocess", "python": str(first)}),
        artifacts)
    second = trt_environment(tmp_path / "b", tensorrt="10.14.1")
    summary = run(recipe(workspace, "tensorrt", "h100", "fp8", "fp8", 1,
                         executor={"kind": "subprocess", "python": str(second), "timeout_s": 600}), artifacts)
    assert load_bundle(bundle_of(summary)).compatibility["tensorrt"] == "10.14.1"
    build = next(s for s in summary["stages"] if s["name"] == "build")  # type: ignore[attr-defined]
    assert build["status"] == "done"
    # where it runs and how long it may take change nothing: same environment, cached
    again = run(recipe(workspace, "tensorrt", "h100", "fp8", "fp8", 1,
                       executor={"kind": "subprocess", "python": str(second), "timeout_s": 900}), artifacts)
    assert bundle_of(again) == bundle_of(summary)
    assert next(s for s in again["stages"] if s["name"] == "build")["status"] == "skipped"  # type: ignore[attr-defined]


def test_sigterm_to_trtbuild_stops_the_build_container(workspace: Path, tmp_path: Path) -> None:
    """A cancelled CI job or `kill` sends SIGTERM: trtbuild stops its container as for Ctrl-C.

    trtllm-build runs in a (fake) container whose PID 1 ignores SIGTERM; it never finishes here.
    """
    import signal
    import time

    from tests import fake_docker

    docker = fake_docker.install(tmp_path)
    ex = {"kind": "container", "image": "img", "command_prefix": [str(docker.exe), "run", "--rm"]}
    path = recipe(workspace, "tensorrt", "h100", "fp8", "fp8", 1, executor=ex)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.__main__", "run", str(path), "--artifacts",
                             str(tmp_path / "artifacts")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(n.startswith("trtbuild-trtllm-build-") for n in docker.containers()):
            assert proc.poll() is None and time.monotonic() < deadline, "trtllm-build never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert docker.containers() == {}, "the build's container outlived trtbuild"
        assert proc.returncode == 143 and "trtbuild: terminated" in err, err[-2000:]
    finally:
        proc.kill()
        docker.kill_all()
