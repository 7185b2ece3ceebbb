"""build: a quantized checkpoint becomes a bundle (engine or checkpoint + runtime options)."""

from __future__ import annotations

from typing import Any, ClassVar

from pipeline.recipe.load import LoadedRecipe
from pipeline.recipe.schema import Executor
from pipeline.runner.stage import Stage
from pipeline.stages.common import fields

# fields that change how long or where a build runs, never what it produces
IGNORED = frozenset({"tensorrt.executor", "pytorch.executor", "tensorrt.timing_cache",
                     "reference.threads"})


class BuildStage(Stage):
    name = "build"
    inputs = ("quantize",)
    tools: ClassVar[tuple[str, ...]] = ("tensorrt-llm", "tensorrt")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        r = loaded.recipe
        return {"build": fields(r.build, exclude=IGNORED), "target": fields(r.target),
                "name": r.name}

    def executor(self, loaded: LoadedRecipe) -> Executor | None:
        b = loaded.recipe.build
        return b.tensorrt.executor if b.backend == "tensorrt" else None
