"""Teacher-forced comparison on the same token sequences: perplexity ratio, top-1 agreement, KL."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# ids -> log-probabilities [len(ids)-1, vocab] of each next token
Scorer = Callable[[Sequence[int]], torch.Tensor]


@dataclass
class TeacherForced:
    sequences: int
    tokens: int
    ppl_baseline: float
    ppl_candidate: float
    top1_agreement: float
    mean_kl: float
    nll_diff_per_seq: list[float]  # candidate - baseline mean NLL per sequence (paired)

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_candidate / self.ppl_baseline


def compare(baseline: Scorer, candidate: Scorer, sequences: Sequence[Sequence[int]],
            progress: Callable[[], None] | None = None) -> TeacherForced:
    nll_b = nll_c = kl_sum = 0.0
    agree = tokens = 0
    diffs: list[float] = []
    for ids in sequences:
        lb, lc = baseline(ids), candidate(ids)
        target = torch.tensor(list(ids[1:]))
        tb = -lb.gather(1, target[:, None]).squeeze(1)
        tc = -lc.gather(1, target[:, None]).squeeze(1)
        nll_b += float(tb.sum())
        nll_c += float(tc.sum())
        diffs.append(float(tc.mean() - tb.mean()))
        agree += int((lb.argmax(-1) == lc.argmax(-1)).sum())
        # KL(baseline || candidate) per position
        kl_sum += float((lb.exp() * (lb - lc)).sum(-1).sum())
        tokens += len(target)
        if progress is not None:
            progress()
    return TeacherForced(
        sequences=len(sequences), tokens=tokens, ppl_baseline=math.exp(nll_b / tokens),
        ppl_candidate=math.exp(nll_c / tokens), top1_agreement=agree / tokens, mean_kl=kl_sum / tokens,
        nll_diff_per_seq=diffs,
    )
