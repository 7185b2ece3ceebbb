"""throughput: the served candidate against a vLLM baseline on the same workload."""

from __future__ import annotations

from typing import Any

from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage
from pipeline.stages.common import fields


class ThroughputStage(Stage):
    name = "throughput"
    inputs = ("fetch", "quantize", "build")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return fields(loaded.recipe.gates.throughput, exclude={"enabled", "baseline.start_timeout_s"})

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.gates.throughput.enabled
