"""Bundles: manifests verify, a flipped byte is refused by name, and compatibility refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.bundle import (
    check_compatible,
    compatibility_problems,
    facts_for_target,
    load_bundle,
    write_manifest,
)
from pipeline.errors import CompatibilityError, IntegrityError
from tests.conftest import ROOT

H100_ENGINE = {"backend": "tensorrt", "gpu": "h100", "sm": 90, "arch": "hopper", "tensorrt": "10.14.1",
               "tensorrt_llm": "1.2.0", "tensor_parallel": 2, "pipeline_parallel": 1,
               "quant_algo": "fp8", "kv_cache_quant_algo": "fp8"}


def make(tmp_path: Path, compat: dict[str, object] | None = None) -> Path:
    d = tmp_path / "bundle"
    (d / "engine").mkdir(parents=True)
    (d / "engine" / "rank0.engine").write_bytes(b"\x00" * 1000)
    (d / "engine" / "config.json").write_text("{}")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.pyc").write_bytes(b"junk")  # never counts as content
    write_manifest(d, name="t", backend=str((compat or H100_ENGINE)["backend"]), provenance={"p": 1},
                   compatibility=compat or H100_ENGINE, runtime={})
    return d


def test_manifest_lists_files_and_id_is_its_digest(tmp_path: Path) -> None:
    d = make(tmp_path)
    b = load_bundle(d)
    assert [f["path"] for f in b.manifest["files"]] == ["engine/config.json", "engine/rank0.engine"]
    import hashlib

    assert b.id == hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()
    # deterministic: writing again gives the same id
    assert write_manifest(d, name="t", backend="tensorrt", provenance={"p": 1}, compatibility=H100_ENGINE,
                          runtime={}) == b.id


def test_flipped_byte_is_refused_naming_the_file(tmp_path: Path) -> None:
    d = make(tmp_path)
    p = d / "engine" / "rank0.engine"
    data = bytearray(p.read_bytes())
    data[500] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"engine/rank0.engine does not match its sha256"):
        load_bundle(d)


def test_missing_extra_and_unmanifested(tmp_path: Path) -> None:
    d = make(tmp_path)
    (d / "engine" / "extra.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"extra\.bin is not listed"):
        load_bundle(d)
    (d / "engine" / "extra.bin").unlink()
    (d / "engine" / "config.json").unlink()
    with pytest.raises(IntegrityError, match=r"config\.json is missing"):
        load_bundle(d)
    (d / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match=r"no manifest\.json; not a bundle"):
        load_bundle(d)


def test_sm90_bundle_refused_on_b200() -> None:
    problems = compatibility_problems(H100_ENGINE, facts_for_target("b200"))
    assert len(problems) == 1
    assert "built for sm90 (h100), runtime GPU is sm100 (b200)" in problems[0]
    assert "rebuild with target.gpu: b200" in problems[0]


def test_trt_version_mismatch_refused() -> None:
    problems = compatibility_problems(H100_ENGINE, facts_for_target("h100", tensorrt="10.13.0"))
    assert problems == ["engine was built with TensorRT 10.14.1, runtime has TensorRT 10.13.0; engines do not "
                        "load across versions: rebuild in the runtime's container or deploy TensorRT 10.14.1"]
    problems = compatibility_problems(H100_ENGINE, facts_for_target("h100", tensorrt_llm="1.1.0"))
    assert len(problems) == 1 and "TensorRT-LLM 1.2.0" in problems[0]


def test_tp_mismatch_refused() -> None:
    problems = compatibility_problems(H100_ENGINE, facts_for_target("h100", tensor_parallel=4))
    assert problems == ["bundle was built for TP 2, deployment asks TP 4; TP/PP are fixed when the checkpoint "
                        "is converted: rebuild with target.tensor_parallel: 4"]
    assert "needs 2 GPUs" in compatibility_problems(H100_ENGINE, facts_for_target("h100", gpus=1))[0]


def test_compatible_and_cpu_cases(tmp_path: Path) -> None:
    assert compatibility_problems(H100_ENGINE, facts_for_target("h100", tensorrt="10.14.1")) == []
    assert compatibility_problems(H100_ENGINE, facts_for_target("h200")) == []  # same sm90
    ref = {"backend": "reference", "gpu": "cpu", "sm": None, "tensor_parallel": 1, "pipeline_parallel": 1}
    assert compatibility_problems(ref, facts_for_target("cpu")) == []
    assert "CPU reference bundle" in compatibility_problems(ref, facts_for_target("h100"))[0]
    assert "no NVIDIA GPU" in compatibility_problems(H100_ENGINE, facts_for_target("cpu"))[0]
    with pytest.raises(CompatibilityError, match="cannot run here"):
        check_compatible(load_bundle(make(tmp_path)), facts_for_target("b200"))


def test_check_cli(tmp_path: Path) -> None:
    d = make(tmp_path)
    run = [sys.executable, "-m", "pipeline.cli.__main__", "check", str(d)]
    ok = subprocess.run([*run, "--target", "h100", "--json"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["compatible"] is True
    bad = subprocess.run([*run, "--target", "b200"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith("trtbuild: error: bundle ") and "sm90" in lines[-1]
    assert "Traceback" not in bad.stderr


def test_check_versions_given_override_the_detected_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`trtbuild check B --tensorrt X` on a GPU host: X is the runtime's TensorRT, not ignored."""
    import pipeline.bundle
    from pipeline.cli import main

    detected = pipeline.bundle.RuntimeFacts(gpu="h100", sm=90, tensorrt="10.14.1", tensorrt_llm="1.2.0", gpus=8,
                                            source="detected")
    monkeypatch.setattr(pipeline.bundle, "detect_runtime", lambda: detected)
    d = make(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["check", str(d)])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main(["check", str(d), "--tensorrt", "10.11.0"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("trtbuild: error: bundle ") and "runtime has TensorRT 10.11.0" in err[-1]


def test_check_against_a_serving_image_uses_its_recorded_versions(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """defect 2: the k8s image must carry the engine's TensorRT; `check --image` refuses one that does not."""
    from pipeline.cli import main

    built = make(tmp_path, {**H100_ENGINE, "tensorrt": "10.14.1.48", "tensorrt_llm": "1.2.1"})

    def check(*args: str) -> int:
        with pytest.raises(SystemExit) as e:
            main(["check", str(built), "--target", "h100", *args])
        return int(e.value.code or 0)

    assert check("--image", "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3") == 0
    assert check("--image", "nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3") == 1  # TRT 10.13, TRT-LLM 1.1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "runtime has TensorRT 10.13.3.9" in err and "runtime has TensorRT-LLM 1.1.0" in err
    assert check("--image", "nvcr.io/nvidia/tritonserver:24.01-trtllm-python-py3") == 2
    assert "not in the upstream records" in capsys.readouterr().err
