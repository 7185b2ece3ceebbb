"""release: the bundle into the store (immutable) and a version into the MLflow registry."""

from __future__ import annotations

from typing import Any

from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage
from pipeline.stages.common import fields


class ReleaseStage(Stage):
    name = "release"
    inputs = ("build", "accuracy", "throughput")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return fields(loaded.recipe.release, exclude={"enabled", "upload_concurrency"})

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.release.enabled
