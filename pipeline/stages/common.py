"""Helpers stages share: picking the recipe fields that matter."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


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
