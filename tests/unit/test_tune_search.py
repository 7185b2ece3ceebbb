"""The tune search against a synthetic engine whose goodput surface the test sets.

The engine's "true" goodput is a function of the settings chosen here; each trial adds seeded
Gaussian noise and advances a fake clock by a fixed trial cost, so the wall-clock budget is exact.
"""

from __future__ import annotations

import math
import random

import pytest

from pipeline.tune.search import NoiseRule, SearchConfig, Trial, grid, successive_halving

SPACE = {"max_batch_size": [1, 2, 4, 8, 16, 32], "max_num_tokens": [256, 512, 1024, 2048]}


class SyntheticEngine:
    """goodput = peak - a*(log2(mbs) - log2(best_mbs))^2 - b*(log2(tokens) - log2(best_tokens))^2 + noise."""

    def __init__(self, best: dict[str, int], *, noise: float = 0.02, trial_s: float = 10.0, seed: int = 0,
                 plateau: dict[str, int] | None = None) -> None:
        self.best, self.noise, self.trial_s, self.plateau = best, noise, trial_s, plateau
        self.rng = random.Random(seed)
        self.now = 0.0
        self.calls = 0

    def true_goodput(self, s: dict[str, int]) -> float:
        if self.plateau is not None and s == self.plateau:
            return 10.0  # a second optimum of the same height
        d_mbs = math.log2(s["max_batch_size"]) - math.log2(self.best["max_batch_size"])
        d_tok = math.log2(s["max_num_tokens"]) - math.log2(self.best["max_num_tokens"])
        return 10.0 - 1.0 * d_mbs ** 2 - 0.8 * d_tok ** 2

    def measure(self, s: dict[str, int], trial: int) -> Trial:
        self.calls += 1
        self.now += self.trial_s
        g = self.true_goodput(s) * (1 + self.rng.gauss(0, self.noise))
        return Trial(goodput=g, metrics={"ttft_p99": 1.0 / max(g, 0.1)})

    def clock(self) -> float:
        return self.now


@pytest.mark.parametrize("best", [{"max_batch_size": 8, "max_num_tokens": 1024},
                                  {"max_batch_size": 2, "max_num_tokens": 256},
                                  {"max_batch_size": 32, "max_num_tokens": 2048}])
def test_finds_the_optimum_within_budget(best: dict[str, int]) -> None:
    engine = SyntheticEngine(best, seed=sum(best.values()))
    space = grid(SPACE)  # 24 points
    budget = 60 * engine.trial_s  # 60 trials: fewer than 24 points x 4 trials
    result = successive_halving(space, engine.measure, SearchConfig(budget_s=budget), clock=engine.clock)
    assert result.best is not None
    assert result.best.settings == best
    assert result.seconds <= budget
    assert engine.calls == result.trials <= 60
    assert not result.tie  # the optimum is 0.8 goodput (8%) above its nearest neighbour


def test_budget_stops_the_search_and_says_so() -> None:
    engine = SyntheticEngine({"max_batch_size": 8, "max_num_tokens": 1024})
    result = successive_halving(grid(SPACE), engine.measure, SearchConfig(budget_s=10 * engine.trial_s),
                                clock=engine.clock)
    assert result.stopped_by_budget
    assert result.seconds <= 10 * engine.trial_s
    assert engine.calls == 10


def test_two_optima_within_noise_are_a_tie() -> None:
    best = {"max_batch_size": 8, "max_num_tokens": 1024}
    twin = {"max_batch_size": 32, "max_num_tokens": 256}  # far from `best` on the grid, same height
    engine = SyntheticEngine(best, plateau=twin, seed=3)
    result = successive_halving(grid(SPACE), engine.measure, SearchConfig(budget_s=600 * engine.trial_s),
                                clock=engine.clock)
    assert result.tie
    assert {result.best.settings["max_batch_size"], result.runner_up.settings["max_batch_size"]} == {8, 32}
    # the stated rule: between tied finalists the earlier point of the space wins
    assert result.best.settings == best
    # close points were repeated before calling the tie
    assert len(result.best.trials) == len(result.runner_up.trials) == SearchConfig(budget_s=1).max_trials


def test_a_failing_point_is_recorded_not_fatal() -> None:
    engine = SyntheticEngine({"max_batch_size": 4, "max_num_tokens": 512})

    def measure(s: dict[str, int], trial: int) -> Trial:
        if s["max_batch_size"] == 32:
            engine.now += 1
            raise RuntimeError("server refused max_batch_size 32")
        return engine.measure(s, trial)

    result = successive_halving(grid(SPACE), measure, SearchConfig(budget_s=1000), clock=engine.clock)
    failed = [p for p in result.points if p.error]
    assert len(failed) == 4 and all("refused" in (p.error or "") for p in failed)
    assert result.best is not None and result.best.settings == {"max_batch_size": 4, "max_num_tokens": 512}


def test_noise_rule() -> None:
    rule = NoiseRule(alpha=0.05, min_effect=0.03)
    assert rule.differ([10.0, 10.1, 9.9], [8.0, 8.1, 7.9])[0]
    assert not rule.differ([10.0, 10.5, 9.5], [10.1, 9.6, 10.4])[0]
    # significant but tiny (1%): below the effect floor, a tie
    assert not rule.differ([10.0, 10.0001, 9.9999], [9.9, 9.9001, 9.8999])[0]
    # one trial each: only the effect size counts, and it must exceed 2 * min_effect
    assert rule.differ([10.0], [9.0])[0] and not rule.differ([10.0], [9.5])[0]


def test_confirmation_trials_alternate_and_stop_at_the_budget() -> None:
    import time

    from pipeline.stages.tune import TuneStage

    engine = SyntheticEngine({"max_batch_size": 8, "max_num_tokens": 1024})
    space = [{"max_batch_size": 2, "max_num_tokens": 256}, {"max_batch_size": 8, "max_num_tokens": 1024}]
    result = successive_halving(space, engine.measure, SearchConfig(budget_s=1000), clock=engine.clock)
    assert result.best is not None and result.best.index == 1
    order: list[int] = []

    def one_trial(settings: dict[str, int], n: int) -> Trial:
        order.append(settings["max_batch_size"])
        return engine.measure(settings, n)

    got = TuneStage._confirm(result, one_trial, 2, time.monotonic(), budget_s=600)
    assert got is not None and order == [2, 8, 8, 2]  # default first, then the chosen first
    assert got["ratio"] == pytest.approx(sum(got["tuned_goodput"]) / sum(got["default_goodput"]))
    assert got["ratio"] > 1.5  # true surface: 10 vs 10 - 2^2 - 0.8 * 2^2 = 2.8
    order.clear()
    assert TuneStage._confirm(result, one_trial, 2, time.monotonic() - 700, budget_s=600) is None
    assert order == []
    # the search's trials took 10 s each (Trial.seconds): 595 s spent leaves no room for one more
    for p in result.points:
        for t in p.trials:
            t.seconds = 10.0
    assert TuneStage._confirm(result, one_trial, 2, time.monotonic() - 595, budget_s=600) is None
    assert order == []


def test_confirmation_that_does_not_hold_keeps_the_default() -> None:
    import time

    from pipeline.stages.tune import TuneStage

    # the search saw point 1 ahead (one lucky trial each); the confirmation says they are equal
    engine = SyntheticEngine({"max_batch_size": 8, "max_num_tokens": 1024}, noise=0.0)
    space = [{"max_batch_size": 8, "max_num_tokens": 1024}, {"max_batch_size": 4, "max_num_tokens": 1024}]
    result = successive_halving(space, lambda s, n: Trial(goodput=10.0 if s["max_batch_size"] == 8 and n else
                                                          (9.0 if s["max_batch_size"] == 8 else 11.0)),
                                SearchConfig(budget_s=1000, max_trials=1), clock=engine.clock)
    assert result.best is not None and result.best.index == 1

    def one_trial(settings: dict[str, int], n: int) -> Trial:
        return Trial(goodput=10.0)

    got = TuneStage._confirm(result, one_trial, 2, time.monotonic(), budget_s=600)
    assert got is not None and got["ratio"] == pytest.approx(1.0)
    assert TuneStage._keep_default(result, NoiseRule())
    assert result.best.index == 0 and result.tie
