"""Helpers stages share: picking the recipe fields that matter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from pipeline.runner.stage import StageContext


def fields(model: BaseModel, *, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """model_dump without the dotted field paths in `exclude` (fields that never change output)."""
    data = model.model_dump(mode="json")
    for dotted in exclude:
        parts = dotted.split(".")
        node: Any = data
        for p in parts[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return data


def served_bundle(ctx: StageContext) -> tuple[Path, str]:
    """(bundle dir, bundle id) of what is served and released: the tune stage's bundle (the build's
    files plus its serving profiles) when tune ran, else the build's."""
    tune = ctx.inputs.get("tune")
    if tune is not None and tune.outputs.get("bundle"):
        return Path(tune.outputs["bundle"]), str(tune.summary["bundle_id"])
    build = ctx.inputs["build"]
    return Path(build.outputs["bundle"]), str(build.summary["bundle_id"])
