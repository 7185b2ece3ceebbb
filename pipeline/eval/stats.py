"""Statistical decisions for the accuracy gate, with the effect size each sample can detect.

- McNemar's exact test for paired right/wrong outcomes (candidate vs baseline on the same items).
- A paired bootstrap for continuous per-item metrics (log-likelihood, KL).
- TensorRT-LLM's unpaired rule against a stored reference: threshold = reference -
  z(1-alpha) * sqrt(2 sigma^2 / n) for 0-100 scores, and its minimum detectable effect
  (z(1-alpha) + z(1-beta)) * sqrt(2 sigma^2 / n).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist


def z(p: float) -> float:
    """Standard normal quantile."""
    return NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class McNemar:
    n: int
    baseline_only: int  # baseline right, candidate wrong
    candidate_only: int  # candidate right, baseline wrong
    p_worse: float  # one-sided: P(at least this many candidate-only losses | no difference)
    p_two_sided: float


def _binom_sf(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly."""
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def mcnemar_exact(baseline: Sequence[bool], candidate: Sequence[bool]) -> McNemar:
    if len(baseline) != len(candidate):
        raise ValueError("McNemar needs the same items scored for both")
    b = sum(1 for x, y in zip(baseline, candidate, strict=True) if x and not y)
    c = sum(1 for x, y in zip(baseline, candidate, strict=True) if y and not x)
    n = b + c
    p_worse = _binom_sf(b, n)
    p_two = min(1.0, 2 * min(_binom_sf(b, n), _binom_sf(c, n)))
    return McNemar(len(baseline), b, c, p_worse, p_two)


@dataclass(frozen=True)
class Bootstrap:
    mean: float
    low: float  # (alpha, 1-alpha) percentile interval of the mean difference
    high: float
    p_exceeds: float  # share of resampled means above the tolerance


def paired_bootstrap(diffs: Sequence[float], *, tolerance: float, alpha: float = 0.05, resamples: int = 2000,
                     seed: int = 0) -> Bootstrap:
    """Bootstrap the mean of per-item (candidate - baseline) differences; larger = worse."""
    if not diffs:
        raise ValueError("no paired items")
    rng = random.Random(seed)  # noqa: S311 - statistics, not cryptography
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int(alpha * (resamples - 1))]
    hi = means[int((1 - alpha) * (resamples - 1))]
    p = sum(1 for m in means if m > tolerance) / resamples
    return Bootstrap(sum(diffs) / n, lo, hi, p)


def trtllm_threshold(reference: float, *, n: int, sigma: float = 50.0, alpha: float = 0.05,
                     higher_is_better: bool = True) -> float:
    """TensorRT-LLM's accuracy-test threshold for a 0-100 score measured on n items."""
    margin = z(1 - alpha) * math.sqrt(2 * sigma**2 / n)
    return reference - margin if higher_is_better else reference + margin


def minimum_detectable_effect(*, n: int, sigma: float = 50.0, alpha: float = 0.05, beta: float = 0.2) -> float:
    """The smallest true drop (points) the unpaired test detects with power 1-beta."""
    return (z(1 - alpha) + z(1 - beta)) * math.sqrt(2 * sigma**2 / n)


def items_for_effect(effect: float, *, sigma: float = 50.0, alpha: float = 0.05, beta: float = 0.2) -> int:
    """Items needed to detect a drop of `effect` points."""
    return math.ceil(2 * sigma**2 * ((z(1 - alpha) + z(1 - beta)) / effect) ** 2)
