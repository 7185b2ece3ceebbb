"""Budgeted search over runtime settings: successive halving, repeats for close points, ties.

Rounds: every surviving point gets trials until it has `trials_in_round` of them, the points are
ranked by mean goodput, and the upper half (1/eta) survives. A point that is not separable from
the last survivor by the noise rule survives too (up to `max_points_kept` extra), so halving never
drops a point on a coin flip. After the last round, the best point is compared with the runner-up;
while they are within noise and the budget allows, both get more trials (up to `max_trials`).

Noise rule (stated once, used everywhere): two points differ beyond noise when Welch's t-test on
their per-trial goodput gives p < `alpha` AND their means differ by more than `min_effect` (a
relative difference; with one trial each, only the effect size can be checked and it must exceed
`2 * min_effect`). Otherwise they tie; a tie is reported, and the smaller setting (the first in the
space's order, usually the cheaper one) is chosen between tied points.

The budget is wall-clock: before each trial the search checks that the time spent plus the median
trial time so far fits in `budget_s`; when it does not, the search stops and says so.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Settings = dict[str, Any]


@dataclass
class Trial:
    goodput: float  # requests/s meeting the SLOs (summed over the objective's workloads)
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # ttft_p99, tpot_p99, output_tok_s, ...


@dataclass
class PointResult:
    index: int  # position in the space's order (ties go to the lower index)
    settings: Settings
    trials: list[Trial] = field(default_factory=list)
    dropped_in_round: int | None = None
    error: str | None = None

    @property
    def goodputs(self) -> list[float]:
        return [t.goodput for t in self.trials]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.goodputs) if self.trials else float("-inf")

    def metric(self, name: str) -> float:
        vals = [t.metrics[name] for t in self.trials if name in t.metrics]
        return statistics.median(vals) if vals else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "settings": self.settings, "goodput_mean": _finite(self.mean),
                "goodput_trials": self.goodputs, "dropped_in_round": self.dropped_in_round, "error": self.error,
                "metrics": {k: _finite(self.metric(k)) for k in sorted({m for t in self.trials for m in t.metrics})},
                "seconds": sum(t.seconds for t in self.trials)}


@dataclass(frozen=True)
class NoiseRule:
    alpha: float = 0.05
    min_effect: float = 0.03

    def differ(self, a: list[float], b: list[float]) -> tuple[bool, float | None]:
        """Whether `a` and `b` differ beyond noise, and Welch's p-value (None with a single trial)."""
        ma, mb = statistics.fmean(a), statistics.fmean(b)
        scale = max(abs(ma), abs(mb), 1e-12)
        effect = abs(ma - mb) / scale
        if len(a) < 2 or len(b) < 2:
            return effect > 2 * self.min_effect, None
        p = welch_p(a, b)
        return (p < self.alpha and effect > self.min_effect), p

    def describe(self) -> str:
        return (f"points differ when Welch's t-test on per-trial goodput gives p < {self.alpha} and the means "
                f"differ by more than {self.min_effect:.0%} (with one trial each: by more than "
                f"{2 * self.min_effect:.0%}); otherwise they tie and the earlier point of the space wins")


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test."""
    from scipy import stats

    va, vb = statistics.variance(a), statistics.variance(b)
    if va == 0 and vb == 0:
        return 0.0 if statistics.fmean(a) != statistics.fmean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


@dataclass
class SearchResult:
    points: list[PointResult]
    best: PointResult | None
    runner_up: PointResult | None
    tie: bool  # best and runner-up within noise
    tied_with: list[int]  # indexes of every point within noise of the best
    p_value: float | None
    rounds: int
    trials: int
    seconds: float
    stopped_by_budget: bool
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"best": self.best.to_json() if self.best else None,
                "runner_up": self.runner_up.to_json() if self.runner_up else None,
                "tie": self.tie, "tied_with": self.tied_with, "p_value": self.p_value, "rounds": self.rounds,
                "trials": self.trials, "seconds": self.seconds, "stopped_by_budget": self.stopped_by_budget,
                "noise_rule": self.rule, "points": [p.to_json() for p in self.points]}


@dataclass(frozen=True)
class SearchConfig:
    budget_s: float
    eta: int = 2
    first_trials: int = 1  # trials per point in the first round
    max_trials: int = 4  # trials per point at most (repeats for close points stop here)
    max_points_kept: int = 2  # extra survivors kept per round because they tie with the cut
    rule: NoiseRule = NoiseRule()


class Budget:
    def __init__(self, budget_s: float, clock: Callable[[], float]) -> None:
        self.budget_s, self.clock = budget_s, clock
        self.start = clock()
        self.costs: list[float] = []
        self.exhausted = False

    def spent(self) -> float:
        return self.clock() - self.start

    def allows(self, fixed_cost: float = 0.0) -> bool:
        """Whether one more trial fits: spent + the median trial so far (+ a fixed cost) <= budget."""
        guess = statistics.median(self.costs) if self.costs else 0.0
        ok = self.spent() + guess + fixed_cost <= self.budget_s
        self.exhausted |= not ok
        return ok


Measure = Callable[[Settings, int], Trial]  # (settings, trial number) -> one trial


def successive_halving(space: list[Settings], measure: Measure, config: SearchConfig, *,
                       clock: Callable[[], float] = time.monotonic,
                       on_trial: Callable[[PointResult, Trial], None] | None = None) -> SearchResult:
    """Find the settings of `space` with the highest mean goodput within `config.budget_s`.

    `measure` may raise: the point is then dropped with its error (a setting the server refuses is
    a result, not a crash of the search).
    """
    if not space:
        raise ValueError("the search space is empty")
    rule = config.rule
    budget = Budget(config.budget_s, clock)
    points = [PointResult(i, dict(s)) for i, s in enumerate(space)]
    alive = list(points)
    want = config.first_trials
    rounds = 0

    def run_trials(pts: list[PointResult], n: int) -> None:
        for _ in range(n):  # breadth first: every point gets its k-th trial before any gets k+1
            for p in pts:
                if p.error is not None or len(p.trials) >= n or not budget.allows():
                    continue
                t0 = clock()
                try:
                    trial = measure(p.settings, len(p.trials))
                except Exception as e:
                    p.error = f"{type(e).__name__}: {e}"
                    budget.costs.append(clock() - t0)
                    continue
                trial.seconds = trial.seconds or clock() - t0
                budget.costs.append(clock() - t0)
                p.trials.append(trial)
                if on_trial is not None:
                    on_trial(p, trial)

    while True:
        rounds += 1
        run_trials(alive, want)
        alive = [p for p in alive if p.error is None and p.trials]
        if len(alive) <= 1 or budget.exhausted:
            break
        ranked = _rank(alive)
        keep_n = max(1, math.ceil(len(ranked) / config.eta))
        kept, cut = ranked[:keep_n], ranked[keep_n:]
        extra = [p for p in cut if not rule.differ(kept[-1].goodputs, p.goodputs)[0]][:config.max_points_kept]
        if len(kept) + len(extra) >= len(alive):  # nothing would go: keep only the strict half
            extra = []
        for p in cut:
            if p not in extra:
                p.dropped_in_round = rounds
        alive = kept + extra
        if len(alive) == 1:
            break
        want = min(want * config.eta, config.max_trials)

    ranked = _rank([p for p in points if p.error is None and p.trials])
    best = ranked[0] if ranked else None
    runner = ranked[1] if len(ranked) > 1 else None
    p_value: float | None = None
    tie = False
    if best is not None and runner is not None:
        # repeat close points: both get more trials while within noise and below max_trials
        while True:
            differ, p_value = rule.differ(best.goodputs, runner.goodputs)
            if differ or min(len(best.trials), len(runner.trials)) >= config.max_trials or budget.exhausted:
                break
            n = min(len(best.trials), len(runner.trials)) + 1
            before = len(best.trials) + len(runner.trials)
            run_trials([best, runner], n)
            if len(best.trials) + len(runner.trials) == before:
                break
            ranked = _rank([p for p in points if p.error is None and p.trials])
            best, runner = ranked[0], ranked[1]
        tie = not differ
    tied = [] if best is None else sorted(
        p.index for p in points if p.error is None and p.trials and p is not best
        and not rule.differ(best.goodputs, p.goodputs)[0])
    if best is not None and runner is not None and tie and runner.index < best.index:
        # between the two finalists within noise, the earlier one of the space wins (a stated, stable choice)
        best, runner = runner, best
    return SearchResult(points=points, best=best, runner_up=runner, tie=tie, tied_with=tied, p_value=p_value,
                        rounds=rounds, trials=sum(len(p.trials) for p in points), seconds=budget.spent(),
                        stopped_by_budget=budget.exhausted, rule=rule.describe())


def _rank(points: list[PointResult]) -> list[PointResult]:
    return sorted(points, key=lambda p: (-p.mean, p.index))


def grid(space: dict[str, list[Any]]) -> list[Settings]:
    """Every combination of the settings' values, in the order the space lists them."""
    import itertools

    names = list(space)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(space[n] for n in names))]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
