"""Test-only hooks of the reference runtime: a per-step pace and a planted slowdown.

They exist so the throughput gate can be tested with a real tritonserver on a noisy machine:

- `TRTBUILD_TEST_MIN_STEP_S`: the scheduler's steps (prefill included) follow a clock of this
  period while it is busy: step k's tokens are sent no earlier than k+1 periods after it went
  from idle to busy (a request that joins mid-flight gets one token per period too). The schedule is
  absolute, so a step stalled by other processes is made up by the next ones (which skip their
  sleep) and a request's time stays n x period whatever the machine's load, as long as the model
  computes a step in less than the period on average.
- `TRTBUILD_FAULT_TOKEN_DELAY_FRACTION`: every step takes this fraction longer: 0.1 is a runtime
  10% slower per token (the fault the gate must catch). With a pace, the period grows by it;
  without one, each step sleeps this fraction of its own time.

Both are read from the environment of the Triton model (the tritonserver's environment), never
from a recipe, and a model that has one set says so in the server log. Unset: no effect.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

MIN_STEP_ENV = "TRTBUILD_TEST_MIN_STEP_S"
FAULT_ENV = "TRTBUILD_FAULT_TOKEN_DELAY_FRACTION"


@dataclass(frozen=True)
class StepPacing:
    min_step_s: float = 0.0
    fault_delay_fraction: float = 0.0

    @property
    def active(self) -> bool:
        return self.min_step_s > 0 or self.fault_delay_fraction > 0

    def describe(self) -> str:
        return f"{MIN_STEP_ENV}={self.min_step_s:g} {FAULT_ENV}={self.fault_delay_fraction:g}"

    def clock(self) -> StepClock:
        """A clock for one busy period of the scheduler, started now (before its first step)."""
        return StepClock(self)


class StepClock:
    def __init__(self, pacing: StepPacing) -> None:
        self.pacing = pacing
        self.step_start = self.deadline = time.monotonic()

    def tick(self) -> None:
        """Called when a step's tokens are ready, before they are sent: stretch the step."""
        p = self.pacing
        if p.min_step_s > 0:
            self.deadline += p.min_step_s * (1 + p.fault_delay_fraction)
            left = self.deadline - time.monotonic()
            if left > 0:
                time.sleep(left)
        elif p.fault_delay_fraction > 0:
            time.sleep(p.fault_delay_fraction * (time.monotonic() - self.step_start))
        self.step_start = time.monotonic()


def pacing_from_env(env: Mapping[str, str] | None = None) -> StepPacing:
    """The hooks set in `env` (default os.environ); a bad value is a one-line ValueError."""
    env = os.environ if env is None else env
    values = {}
    for name in (MIN_STEP_ENV, FAULT_ENV):
        raw = env.get(name, "").strip()
        try:
            values[name] = float(raw) if raw else 0.0
        except ValueError:
            raise ValueError(f"{name}={raw!r}: not a number; unset it or give seconds/fraction >= 0") from None
        if not 0 <= values[name] < 10:
            raise ValueError(f"{name}={raw!r}: must be >= 0 and < 10")
    return StepPacing(min_step_s=values[MIN_STEP_ENV], fault_delay_fraction=values[FAULT_ENV])
