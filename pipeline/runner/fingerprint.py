"""Stage fingerprints: recipe section + input content digests + tool versions + code version.

Paths never enter a fingerprint; content digests do. `explain` says why two differ.
"""

from __future__ import annotations

from typing import Any

from pipeline.util.hashing import digest_obj


def components(*, stage: str, code_version: int, section: dict[str, Any], inputs: dict[str, str],
               external: dict[str, str], tools: dict[str, str]) -> dict[str, Any]:
    return {"stage": stage, "code_version": code_version, "section": section, "inputs": inputs,
            "external": external, "tools": tools}


def fingerprint(comp: dict[str, Any]) -> str:
    return digest_obj(comp)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def explain(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """One line naming what changed between two fingerprint component sets."""
    reasons: list[str] = []
    if old.get("code_version") != new.get("code_version"):
        reasons.append("stage code changed")
    for key, label in (("inputs", "input"), ("external", "source")):
        o, n = old.get(key, {}), new.get(key, {})
        for name in sorted(set(o) | set(n)):
            if o.get(name) != n.get(name):
                reasons.append(f"{label} '{name}' changed")
    fo, fn = _flatten(old.get("section", {})), _flatten(new.get("section", {}))
    for k in sorted(set(fo) | set(fn)):
        if fo.get(k) != fn.get(k):
            reasons.append(f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}")
    to, tn = old.get("tools", {}), new.get("tools", {})
    for k in sorted(set(to) | set(tn)):
        if to.get(k) != tn.get(k):
            reasons.append(f"{k} {to.get(k)} -> {tn.get(k)}")
    if not reasons:
        return "changed"
    more = f" (+{len(reasons) - limit} more)" if len(reasons) > limit else ""
    return "; ".join(reasons[:limit]) + more
