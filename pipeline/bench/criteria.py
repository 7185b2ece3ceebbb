"""Throughput-gate criteria: ratios to the baseline and absolute SLOs, each a named check."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.bench.harness import Point
from pipeline.recipe.schema import Criterion

HIGHER_IS_BETTER = {"output_tok_s", "req_s", "goodput"}


@dataclass
class CriterionResult:
    workload: str
    concurrency: int
    metric: str
    candidate: float
    baseline: float | None
    ratio: float | None
    bound: str
    passed: bool

    def line(self) -> str:
        # a baseline of 0 (every request failed) has no ratio
        ratio = f"{self.ratio:.3f}" if self.ratio is not None else "n/a"
        base = f", baseline {self.baseline:.4g}, ratio {ratio}" if self.baseline is not None else ""
        return (f"{self.workload}@{self.concurrency} {self.metric}: candidate {self.candidate:.4g}{base} "
                f"(must be {self.bound})")


def evaluate(criteria: list[Criterion], candidate: dict[tuple[str, int], Point],
             baseline: dict[tuple[str, int], Point]) -> list[CriterionResult]:
    out = []
    for c in criteria:
        cp, bp = candidate[(c.workload, c.concurrency)], baseline.get((c.workload, c.concurrency))
        cv = cp.metric(c.metric)
        bv = bp.metric(c.metric) if bp is not None else None
        ratio = cv / bv if bv else None
        ok = cp.failed == 0
        bounds = []
        if c.min_ratio is not None:
            bounds.append(f"ratio >= {c.min_ratio}")
            ok &= ratio is not None and ratio >= c.min_ratio
        if c.max_ratio is not None:
            bounds.append(f"ratio <= {c.max_ratio}")
            ok &= ratio is not None and ratio <= c.max_ratio
        if c.min_value is not None:
            bounds.append(f">= {c.min_value}")
            ok &= cv >= c.min_value
        if c.max_value is not None:
            bounds.append(f"<= {c.max_value}")
            ok &= cv <= c.max_value
        if cp.failed:
            bounds.append(f"and no failed requests (had {cp.failed})")
        out.append(CriterionResult(c.workload, c.concurrency, c.metric, cv, bv, ratio, ", ".join(bounds), bool(ok)))
    return out


def table(points: list[Point]) -> list[str]:
    """The measured points as Markdown table rows (the gate's report and `trtbuild bench`)."""
    rows = ["| workload | conc | endpoint | out tok/s | req/s | goodput | TTFT p50/p99 s | TPOT p50 s | failed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in sorted(points, key=lambda p: (p.workload, p.concurrency, p.endpoint)):
        rows.append(f"| {p.workload} | {p.concurrency} | {p.endpoint} | {p.output_tok_s:.1f} | {p.req_s:.2f} | "
                    f"{p.goodput:.2f} | {p.ttft['p50']:.3f}/{p.ttft['p99']:.3f} | {p.tpot['p50']:.4f} | {p.failed} |")
    return rows


def markdown(results: list[CriterionResult], points: list[Point]) -> str:
    verdict = "PASS" if all(r.passed for r in results) else "FAIL"
    checks = [f"- {'PASS' if r.passed else '**FAIL**'}: {r.line()}" for r in results]
    return "\n".join([f"## Throughput gate: {verdict}", "", *table(points), "", *checks, ""])


def to_json(results: list[CriterionResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
