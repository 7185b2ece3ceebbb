"""The in-flight batching scheduler's decisions: who is admitted, and what each step computes.

It follows TensorRT-LLM's batch manager:
- capacity (GUARANTEED_NO_EVICT): a waiting request is admitted, in arrival order, only while the
  running requests stay within `max_batch_size` and the KV budget `max_kv_tokens` can hold every
  admitted request's prompt plus all of its `max_tokens`. A request once admitted always
  finishes, nothing is evicted. (MAX_UTILIZATION, which admits more and evicts when memory runs
  out, is not implemented: with no eviction there is nothing to get wrong when memory runs out.)
- the step (micro-batch): every running request whose prompt is in decodes one token, then
  prompts still being prefilled get chunks, oldest first, while the step's token count (decode
  tokens + prefill chunk tokens) stays within `max_num_tokens`. A prompt longer than what is
  left is split over steps (chunked context). Finished requests leave at once; their
  reservation is returned.

Pure bookkeeping: runtime.py runs the model on what `plan` returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 8
    max_num_tokens: int = 8192
    max_kv_tokens: int = 0  # 0: max_batch_size x max_seq_len (what the batch can ever hold)

    def check(self, max_seq_len: int) -> SchedulerConfig:
        """This config with the KV default filled in; a ValueError naming the option if one is bad."""
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_num_tokens < self.max_batch_size:
            # every running request decodes one token per step: the budget must hold a full batch
            raise ValueError(f"max_num_tokens ({self.max_num_tokens}) must be >= max_batch_size "
                             f"({self.max_batch_size})")
        kv = self.max_kv_tokens or self.max_batch_size * max_seq_len
        if kv < 1:
            raise ValueError(f"max_kv_tokens must be >= 1, got {self.max_kv_tokens}")
        return SchedulerConfig(self.max_batch_size, self.max_num_tokens, kv)


@dataclass(frozen=True)
class StepPlan:
    decode: int  # running requests that decode a token this step
    prefill: list[tuple[int, int]]  # (index into running, chunk tokens) of prompts being prefilled

    @property
    def tokens(self) -> int:
        return self.decode + sum(n for _, n in self.prefill)

    @property
    def batch(self) -> int:
        return self.decode + len(self.prefill)


@dataclass(frozen=True)
class StepRecord:
    """What one step did (kept for tests and the stats: the limits are visible, not just claimed)."""

    batch: int  # requests computed in this step
    decode_tokens: int
    prefill_tokens: int
    running: int  # admitted requests after admission
    kv_reserved: int


class Capacity:
    """The KV budget: tokens reserved by admitted requests (prompt + max_tokens each)."""

    def __init__(self, max_kv_tokens: int) -> None:
        self.max_kv_tokens = max_kv_tokens
        self.reserved = 0

    def fits(self, tokens: int) -> bool:
        return self.reserved + tokens <= self.max_kv_tokens

    def take(self, tokens: int) -> None:
        self.reserved += tokens

    def give_back(self, tokens: int) -> None:
        self.reserved -= tokens
        if self.reserved < 0:  # a request returned twice: a bug that must not hide
            raise RuntimeError(f"KV accounting below zero ({self.reserved})")


def admit(waiting: deque[int], running: int, cfg: SchedulerConfig, capacity: Capacity) -> int:
    """How many of `waiting` (their KV needs, in arrival order) are admitted now.

    Arrival order is kept: the oldest waiting request that does not fit blocks the ones behind
    it, so a long request is not starved by short ones that keep fitting.
    """
    n = 0
    for need in waiting:
        if running + n >= cfg.max_batch_size or not capacity.fits(need):
            break
        capacity.take(need)
        n += 1
    return n


def plan(decoding: int, prefill_left: Sequence[int], cfg: SchedulerConfig) -> StepPlan:
    """One step: all `decoding` requests decode; `prefill_left[i]` prompt tokens of running
    request i still to prefill (0: done) get chunks in order within the token budget."""
    budget = cfg.max_num_tokens - decoding
    chunks = []
    for i, left in enumerate(prefill_left):
        if budget <= 0:
            break
        if left > 0:
            n = min(left, budget)
            chunks.append((i, n))
            budget -= n
    return StepPlan(decode=decoding, prefill=chunks)
