"""Teacher-forced comparison on the same token sequences: perplexity ratio, top-1 agreement, KL."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# ids -> log-probabilities [len(ids)-1, vocab] of each next token
Scorer = Callable[[Sequence[int]], torch.Tensor]
# sequences of one length -> log-probabilities [len(seqs), len-1, vocab]
BatchScorer = Callable[[Sequence[Sequence[int]]], torch.Tensor]


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
    """One sequence per forward (any scorer); `compare_batched` gives the same numbers faster."""
    return compare_batched(lambda seqs: baseline(seqs[0])[None], lambda seqs: candidate(seqs[0])[None],
                           sequences, batch_size=1, progress=progress)


def compare_batched(baseline: BatchScorer, candidate: BatchScorer, sequences: Sequence[Sequence[int]], *,
                    batch_size: int = 4, progress: Callable[[], None] | None = None) -> TeacherForced:
    """Score up to `batch_size` consecutive sequences of one length per forward.

    The per-sequence arithmetic and the order of accumulation are those of one sequence at a
    time, so the result depends on batching only through the scorers (which give the same bits
    for unpadded rows; tests check it).
    """
    nll_b = nll_c = kl_sum = 0.0
    agree = tokens = 0
    diffs: list[float] = []
    for chunk in _chunks(sequences, batch_size):
        lbs, lcs = baseline(chunk), candidate(chunk)
        for lb, lc, ids in zip(lbs, lcs, chunk, strict=True):
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


def _chunks(sequences: Sequence[Sequence[int]], size: int) -> list[list[Sequence[int]]]:
    """Consecutive runs of at most `size` sequences of one length (order kept)."""
    out: list[list[Sequence[int]]] = []
    for ids in sequences:
        if out and len(out[-1]) < size and len(out[-1][0]) == len(ids):
            out[-1].append(ids)
        else:
            out.append([ids])
    return out
