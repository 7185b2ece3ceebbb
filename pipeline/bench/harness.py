"""Load generation: a workload at a fixed concurrency, warm-up, trials, and statistics.

The same harness drives the candidate and the baseline. It watches itself: an event-loop lag
probe and the client's CPU share tell when the client, not the server, is the bottleneck.
During the measured window the garbage collector is off (objects from before it frozen): a
collection pass over many live records would stall every stream at once and show up as TTFT.
`measure` runs a point on uvloop when it is installed (faster loop, same results).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.bench.client import Endpoint, RequestRecord
from pipeline.bench.http import Session


@dataclass
class Point:
    """One (workload, concurrency, trial) measurement."""

    endpoint: str
    workload: str
    concurrency: int
    requests: int
    failed: int
    seconds: float
    output_tokens: int
    output_tok_s: float
    req_s: float
    goodput: float  # requests/s meeting both SLOs
    ttft: dict[str, float]
    itl: dict[str, float]
    tpot: dict[str, float]
    e2e: dict[str, float]
    loop_lag_max_ms: float
    client_cpu_share: float
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ttft_samples: list[float] = field(default_factory=list)

    def metric(self, name: str) -> float:
        if name in ("output_tok_s", "req_s", "goodput"):
            return float(getattr(self, name))
        family, _, pct = name.partition("_")
        return getattr(self, family)[pct]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "mean": float("nan")}
    s = sorted(values)

    def pct(p: float) -> float:
        # linear interpolation between closest ranks (numpy's default)
        k = (len(s) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "mean": statistics.fmean(s)}


async def _lag_probe(stop: asyncio.Event, out: list[float], interval: float = 0.01) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(interval)
        out.append(time.perf_counter() - t - interval)


async def run_point(endpoint: Endpoint, prompts: list[str], *, output_len: int, concurrency: int,
                    workload: str = "", warmup: int = 0, slo_ttft: float = 2.0, slo_tpot: float = 0.5,
                    timeout: float = 600.0) -> Point:
    """Send every prompt, at most `concurrency` in flight, after `warmup` unmeasured requests and
    with `concurrency` connections opened beforehand."""
    async with Session(timeout=timeout) as session:
        if warmup:
            await asyncio.gather(*(endpoint.stream(session, prompts[i % len(prompts)], output_len)
                                   for i in range(warmup)))
        workers = min(concurrency, len(prompts))
        with contextlib.suppress(ConnectionError, TimeoutError):  # the requests will record it
            await session.prewarm(endpoint.base_url, workers)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for p in prompts:
            queue.put_nowait(p)
        records: list[RequestRecord] = []

        async def worker() -> None:
            while True:
                try:
                    p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                records.append(await endpoint.stream(session, p, output_len))

        stop = asyncio.Event()
        lags: list[float] = []
        probe = asyncio.create_task(_lag_probe(stop, lags))
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        finally:
            gc.enable()
            gc.unfreeze()
        stop.set()
        await probe
    return summarize(records, endpoint=endpoint.name, workload=workload, concurrency=concurrency,
                     seconds=seconds, lags=lags, cpu_share=cpu / seconds if seconds else 0.0,
                     slo_ttft=slo_ttft, slo_tpot=slo_tpot)


def measure(endpoint: Endpoint, prompts: list[str], **kwargs: Any) -> Point:
    """`run_point` on a fresh event loop (uvloop's when installed)."""
    coro = run_point(endpoint, prompts, **kwargs)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def summarize(records: list[RequestRecord], *, endpoint: str, workload: str, concurrency: int, seconds: float,
              lags: list[float], cpu_share: float, slo_ttft: float, slo_tpot: float) -> Point:
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    tokens = sum(r.output_tokens for r in ok)
    good = [r for r in ok if (r.ttft or 0) <= slo_ttft and (r.tpot or 0) <= slo_tpot]
    lag_max = max(lags, default=0.0) * 1000
    warnings = []
    if cpu_share > 0.8:
        warnings.append(f"client used {cpu_share:.0%} of a core: it may be the bottleneck")
    if lag_max > 50:
        warnings.append(f"event loop lagged up to {lag_max:.0f} ms: timestamps may be late")
    return Point(
        endpoint=endpoint, workload=workload, concurrency=concurrency, requests=len(records),
        failed=len(failed), seconds=seconds, output_tokens=tokens,
        output_tok_s=tokens / seconds if seconds else 0.0, req_s=len(ok) / seconds if seconds else 0.0,
        goodput=len(good) / seconds if seconds else 0.0,
        ttft=percentiles([r.ttft for r in ok if r.ttft is not None]),
        itl=percentiles([x for r in ok for x in r.itls]),
        tpot=percentiles([r.tpot for r in ok if r.tpot is not None]),
        e2e=percentiles([r.e2e for r in ok]),
        loop_lag_max_ms=lag_max, client_cpu_share=cpu_share,
        errors=sorted({r.error or "no tokens" for r in failed})[:5], warnings=warnings,
        ttft_samples=[r.ttft for r in ok if r.ttft is not None],
    )


def median_point(points: list[Point]) -> Point:
    """Of repeated trials, the one with the median output throughput."""
    return sorted(points, key=lambda p: p.output_tok_s)[len(points) // 2]
