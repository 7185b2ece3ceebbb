"""Test-only hooks of the reference runtime: a per-step time floor and a planted slowdown.

They exist so the throughput gate can be tested with a real tritonserver on a noisy machine:

- `TRTBUILD_TEST_MIN_STEP_S`: every decode step (prefill included) takes at least this long.
  With a floor well above the model's compute, the time per token is set by the floor, not by
  whatever else the machine is doing, so two servers of the same model measure the same.
- `TRTBUILD_FAULT_TOKEN_DELAY_FRACTION`: after each step, sleep this fraction of the step's
  time: 0.1 is a runtime 10% slower per token (the fault the gate must catch).

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

    def finish_step(self, started: float) -> None:
        """Called when a step's tokens are ready: stretch the step as configured."""
        if self.min_step_s > 0:
            left = self.min_step_s - (time.monotonic() - started)
            if left > 0:
                time.sleep(left)
        if self.fault_delay_fraction > 0:
            time.sleep(self.fault_delay_fraction * (time.monotonic() - started))


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
