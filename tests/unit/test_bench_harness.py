"""The load generator against a paced stand-in server (its own accuracy, not a model's speed)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from pipeline.bench.client import OpenAIEndpoint, TritonEndpoint
from pipeline.bench.harness import percentiles, run_point
from pipeline.util.net import free_port, wait_until
from pipeline.util.proc import stop_process_group


@contextlib.contextmanager
def paced_server(*args: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.bench.paced_server", "--port", str(port), *args],
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        return requests.get(f"{url}/", timeout=2).status_code == 404

    try:
        wait_until(up, timeout=30, what="paced server", alive=lambda: proc.poll() is None)
        yield url
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def paced() -> Iterator[str]:
    with paced_server("--delay-ms", "10") as url:
        yield url


@pytest.mark.parametrize("kind", ["openai", "triton"])
def test_paced_measurements(paced: str, kind: str) -> None:
    ep = OpenAIEndpoint(paced, "m") if kind == "openai" else TritonEndpoint(paced, "m")
    point = asyncio.run(run_point(ep, ["p"] * 16, output_len=8, concurrency=8, workload="w", warmup=2))
    assert point.failed == 0 and point.requests == 16
    assert point.output_tokens == 16 * 8  # from the server's counts
    # 10 ms per token: TTFT about 10 ms, TPOT about 10 ms; the client adds little
    assert 0.009 <= point.ttft["p50"] <= 0.040, point.ttft
    assert 0.009 <= point.tpot["p50"] <= 0.030, point.tpot
    # two waves of 8 requests x 8 tokens x 10 ms = about 0.16 s
    assert 0.15 <= point.seconds <= 0.6
    assert point.goodput == pytest.approx(point.req_s)


def test_failures_are_counted_not_hidden() -> None:
    with paced_server("--fail-every", "4") as url:
        point = asyncio.run(run_point(OpenAIEndpoint(url, "m"), ["p"] * 20, output_len=4, concurrency=4))
        assert point.failed == 5 and "planted failure" in point.errors[0]
        point = asyncio.run(run_point(TritonEndpoint(url, "m"), ["p"] * 20, output_len=4, concurrency=4))
        assert point.failed == 5 and "planted failure" in point.errors[0]


def test_percentiles_interpolate() -> None:
    p = percentiles([float(x) for x in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
