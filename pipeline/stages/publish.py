"""publish: the bundle as the next version of a Triton model repository."""

from __future__ import annotations

from typing import Any

from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage
from pipeline.stages.common import fields


class PublishStage(Stage):
    name = "publish"
    inputs = ("build", "release")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {"publish": fields(loaded.recipe.publish, exclude={"enabled", "load_timeout_s"}),
                "model": loaded.recipe.triton_model_name}

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.publish.enabled
