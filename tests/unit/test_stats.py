"""Statistics of the accuracy gate against known values."""

from __future__ import annotations

import math

import pytest

from pipeline.eval.stats import (
    items_for_effect,
    mcnemar_exact,
    minimum_detectable_effect,
    paired_bootstrap,
    trtllm_threshold,
)


def test_trtllm_threshold_mmlu_4096() -> None:
    # TensorRT-LLM's accuracy suite: MMLU, n=4096, alpha 0.05, sigma 50 -> reference - 1.82
    assert trtllm_threshold(70.0, n=4096) == pytest.approx(70.0 - 1.82, abs=0.005)
    assert trtllm_threshold(70.0, n=4096, higher_is_better=False) == pytest.approx(71.82, abs=0.005)


def test_minimum_detectable_effect() -> None:
    # (1.6449 + 0.8416) * sqrt(2 * 2500 / 4096) = 2.747
    assert minimum_detectable_effect(n=4096) == pytest.approx(2.747, abs=0.002)
    assert items_for_effect(minimum_detectable_effect(n=4096)) in (4096, 4097)


def test_mcnemar_known_values() -> None:
    # 10 discordant pairs, all against the candidate: P = 2^-10
    base = [True] * 10 + [True] * 20
    cand = [False] * 10 + [True] * 20
    m = mcnemar_exact(base, cand)
    assert (m.baseline_only, m.candidate_only) == (10, 0)
    assert m.p_worse == pytest.approx(1 / 1024)
    assert m.p_two_sided == pytest.approx(2 / 1024)
    # b=7, c=3: P(X>=7 | n=10) = (120+45+10+1)/1024 = 0.171875; two-sided 0.34375
    base = [True] * 7 + [False] * 3
    cand = [False] * 7 + [True] * 3
    m = mcnemar_exact(base, cand)
    assert m.p_worse == pytest.approx(176 / 1024)
    assert m.p_two_sided == pytest.approx(352 / 1024)
    # no discordant pairs: no evidence either way
    assert mcnemar_exact([True, False], [True, False]).p_worse == 1.0
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap() -> None:
    good = paired_bootstrap([0.01, -0.02, 0.0, 0.015, -0.01] * 20, tolerance=0.05)
    assert good.p_exceeds == 0.0 and good.low < 0.0 < good.high
    bad = paired_bootstrap([0.2, 0.1, 0.3, 0.25] * 10, tolerance=0.05)
    assert bad.p_exceeds == 1.0 and math.isclose(bad.mean, 0.2125)
    assert paired_bootstrap([0.1] * 5, tolerance=0.0, seed=1) == paired_bootstrap([0.1] * 5, tolerance=0.0, seed=1)
