"""accuracy: the candidate against the unquantized source, with stated statistics."""

from __future__ import annotations

from typing import Any

from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage
from pipeline.stages.common import fields


class AccuracyStage(Stage):
    name = "accuracy"
    inputs = ("fetch", "build")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return fields(loaded.recipe.gates.accuracy, exclude={"enabled"})

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.gates.accuracy.enabled
