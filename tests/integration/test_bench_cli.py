"""`trtbuild bench` against the paced stand-in server: reports, model discovery, one-line errors.

(Against a real tritonserver serving the reference model: tests/integration/test_throughput_gate.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.util.net import free_port
from tests.conftest import ROOT
from tests.unit.test_bench_harness import paced_server

pytestmark = pytest.mark.integration


def bench(*args: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "bench", *args, "--json"], cwd=ROOT,
                       capture_output=True, text=True, check=False, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


@pytest.fixture(scope="module")
def paced() -> Iterator[str]:
    with paced_server("--delay-ms", "10") as url:
        yield url


@pytest.mark.parametrize("kind", ["openai", "triton"])
def test_bench_sweeps_and_writes_the_gate_reports(paced: str, kind: str, tmp_path: Path) -> None:
    rc, out, err = bench("--url", paced, "--kind", kind, "--num-prompts", "8", "--output-len", "8",
                         "--input-len", "16", "--concurrency", "4,1", "--warmup", "1", "--report-dir", str(tmp_path))
    assert rc == 0, err
    assert out["model"] == "paced"  # the only model the server lists
    assert [p["concurrency"] for p in out["points"]] == [1, 4]
    for p in out["points"]:
        assert p["failed"] == 0 and p["output_tokens"] == 8 * 8  # counted by the server
        assert p["tpot"]["p50"] >= 0.01  # 10 ms per token is a floor the client cannot beat
        assert "ttft_samples" not in p  # stdout stays small; the samples are in bench.json
    assert out["workload"]["input_tokens_mean"] == pytest.approx(16, abs=1)
    assert sorted(Path(f).name for f in out["files"]) == ["bench.json", "bench.md", "throughput.png", "ttft_cdf.png"]
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len(saved["points"][0]["ttft_samples"]) == 8
    md = (tmp_path / "bench.md").read_text()
    assert "| workload | conc | endpoint | out tok/s" in md and "| unique | 4 | paced |" in md
    assert "TTFT p50" in err and "tok/s" in err  # the rich table, on stderr


def test_bench_errors_are_one_line(paced: str, tmp_path: Path) -> None:
    nothing = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["--url", nothing, "--kind", "openai"], 1, "cannot connect; is the server running"),
        (["--url", nothing, "--kind", "triton", "--model", "m"], 1, "cannot connect; is the server running"),
        (["--url", "localhost:8000", "--kind", "openai"], 2, "--url 'localhost:8000': expected http://host:port"),
        (["--url", paced, "--kind", "openai", "--concurrency", "0,4"], 2, "--concurrency '0,4': expected positive"),
        (["--url", paced, "--kind", "grpc"], 2, "'grpc' is not one of 'openai', 'triton'"),
        (["--url", paced, "--kind", "openai", "--workload", "shared-prefix", "--input-len", "8"], 2,
         "--prefix-len 96 must be smaller than --input-len 8"),
        (["--url", paced, "--kind", "openai", "--tokenizer", str(tmp_path)], 2,
         f"--tokenizer {tmp_path}: cannot load a tokenizer there"),
    ]
    for args, code, message in cases:
        rc, _, err = bench(*args)
        assert rc == code and message in err, (args, rc, err)
        assert "Traceback" not in err
