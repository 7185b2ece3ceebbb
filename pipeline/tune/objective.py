"""The tune objective: goodput measured with the throughput gate's client and harness.

One trial of a point runs every objective workload at its highest gate concurrency through
`pipeline.bench.harness.run_point` (the gate's client); goodput is the gate's: requests per second
whose own TTFT and TPOT are within the limits (harness.summarize, from per-request records),
summed over the workloads. The latency figures kept per trial are the worst workload's p99s.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from pipeline.tune.search import Trial


@dataclass(frozen=True)
class ObjectivePoint:
    """One workload at one concurrency: what a trial sends."""

    workload: str
    prompts: list[str]
    output_len: int
    concurrency: int


@dataclass(frozen=True)
class Objective:
    points: list[ObjectivePoint]
    slo_ttft_s: float
    slo_tpot_s: float
    warmup: int

    def describe(self) -> str:
        loads = ", ".join(f"{p.workload}@{p.concurrency}" for p in self.points)
        return (f"summed goodput (requests/s with TTFT <= {self.slo_ttft_s} s and TPOT <= {self.slo_tpot_s} s) "
                f"over {loads}")


def objective_of(recipe: Any, prompts: dict[str, Any]) -> Objective:
    """From the recipe: the tune objective's workloads (default all of the gate's), each at its
    highest concurrency, and the SLO limits (default the gate's)."""
    gate, t = recipe.gates.throughput, recipe.tune.objective
    names = t.workloads or [w.name for w in gate.workloads]
    points = [ObjectivePoint(w.name, list(prompts[w.name].texts), w.output_len, max(w.concurrency))
              for w in gate.workloads if w.name in names]
    return Objective(points, slo_ttft_s=t.slo_ttft_s or gate.slo_ttft_s, slo_tpot_s=t.slo_tpot_s or gate.slo_tpot_s,
                     warmup=gate.warmup_requests if t.warmup_requests is None else t.warmup_requests)


def measure(endpoint: Any, objective: Objective) -> tuple[Trial, list[Any]]:
    """One trial against a served endpoint: (the trial, the harness's Points per workload)."""
    from pipeline.bench.harness import run_point

    got = [asyncio.run(run_point(endpoint, p.prompts, output_len=p.output_len, concurrency=p.concurrency,
                                 workload=p.workload, warmup=objective.warmup, slo_ttft=objective.slo_ttft_s,
                                 slo_tpot=objective.slo_tpot_s)) for p in objective.points]
    return trial_of(got), got


def trial_of(points: list[Any]) -> Trial:
    """Summed goodput and the worst p99s of the harness's Points (NaN-free: an empty p99 is inf)."""
    def worst(family: str) -> float:
        vals = [p.metric(f"{family}_p99") for p in points]
        vals = [float("inf") if math.isnan(v) else v for v in vals]  # NaN (no successful request) is the worst
        return max(vals, default=float("inf"))

    failed = sum(p.failed for p in points)
    return Trial(goodput=sum(p.goodput for p in points),
                 metrics={"ttft_p99": worst("ttft"), "tpot_p99": worst("tpot"),
                          "output_tok_s": sum(p.output_tok_s for p in points),
                          "req_s": sum(p.req_s for p in points), "failed": float(failed)})
