"""The tune report: JSON (every point and trial), Markdown, and goodput vs TTFT p99 with the choice."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.util import atomic


def write_report(workdir: Path, *, result: Any, profiles: dict[str, dict[str, Any]], default_point: int,
                 objective: str, space: dict[str, list[Any]], budget_s: float, seconds: float,
                 confirmed: dict[str, Any] | None = None) -> dict[str, str]:
    """tune.json, tune.md and tune.png in `workdir`; returns output name -> file name."""
    best = result.best
    default = next(p for p in result.points if p.index == default_point)
    in_search = (best.mean / default.mean) if best is not None and default.trials and default.mean > 0 else None
    ratio = confirmed["ratio"] if confirmed else in_search
    doc = {"objective": objective, "space": space, "budget_s": budget_s, "seconds": seconds,
           "default_point": default_point, "tuned_vs_default_goodput": ratio,
           "tuned_vs_default_in_search": in_search, "confirmed": confirmed, "profiles": profiles,
           "search": result.to_json()}
    atomic.write_text(workdir / "tune.json", json.dumps(_finite(doc), indent=2, sort_keys=True, allow_nan=False) + "\n")
    atomic.write_text(workdir / "tune.md", markdown(doc, result))
    out = {"report": "tune.json", "markdown": "tune.md"}
    if plot(result, profiles, default_point, workdir / "tune.png"):
        out["plot"] = "tune.png"
    return out


def markdown(doc: dict[str, Any], result: Any) -> str:
    s = doc["search"]
    ratio = doc["tuned_vs_default_goodput"]
    lines = ["## Tune", "", f"Objective: {doc['objective']}.", "",
             f"{s['trials']} trials in {s['rounds']} rounds, {doc['seconds']:.0f} s of a {doc['budget_s']} s budget"
             + (" (stopped by the budget)" if s["stopped_by_budget"] else "") + ".",
             f"Noise rule: {s['noise_rule']}.", ""]
    if s["tie"]:
        lines += [f"**Tie**: the best and the runner-up are within noise (p = {_p(s['p_value'])}).", ""]
    c = doc["confirmed"]
    if c:
        lines += [f"Tuned vs default settings: goodput ratio {ratio:.3f} (confirmation trials, alternating: default "
                  f"{', '.join(f'{g:.3f}' for g in c['default_goodput'])}, tuned "
                  f"{', '.join(f'{g:.3f}' for g in c['tuned_goodput'])}; in the search "
                  f"{_f(doc['tuned_vs_default_in_search'] or math.nan)})."
                  + (" With these trials the settings found do not beat the default beyond noise: the default "
                     "settings are kept." if c.get("kept_default") else ""), ""]
    else:
        lines += [f"Tuned vs default settings: goodput ratio {ratio:.3f}"
                  + (" (the default settings were chosen)." if doc["profiles"] and
                     any(p["point"] == doc["default_point"] for p in doc["profiles"].values()) else ".")
                  if ratio else
                  "Tuned vs default settings: no ratio (the default point was not measured or had no goodput).", ""]
    lines += ["| point | settings | goodput mean | trials | TTFT p99 s | TPOT p99 s | out tok/s | dropped | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    chosen: dict[int, list[str]] = {}
    for name, prof in doc["profiles"].items():
        chosen.setdefault(prof["point"], []).append(name)
    for p in sorted(result.points, key=lambda p: (-p.mean, p.index)):
        note = ", ".join(x for x in ("profile " + "+".join(chosen[p.index]) if p.index in chosen else "",
                                     "default" if p.index == doc["default_point"] else "", p.error or "") if x)
        settings = ", ".join(f"{k}={v}" for k, v in p.settings.items())
        mean = f"{p.mean:.3f}" if p.trials else "-"
        lines.append(f"| {p.index} | {settings} | {mean} | {', '.join(f'{g:.3f}' for g in p.goodputs)} | "
                     f"{_f(p.metric('ttft_p99'))} | {_f(p.metric('tpot_p99'))} | {_f(p.metric('output_tok_s'), 1)} | "
                     f"{p.dropped_in_round or ''} | {note} |")
    lines.append("")
    for name, prof in doc["profiles"].items():
        lines.append(f"- profile **{name}**: {prof['settings']} ({prof['why']}); goodput "
                     f"{prof['measured']['goodput']:.3f} req/s, TTFT p99 {_f(prof['measured']['ttft_p99'])} s")
    return "\n".join(lines) + "\n"


def plot(result: Any, profiles: dict[str, dict[str, Any]], default_point: int, path: Path) -> bool:
    """Goodput vs TTFT p99, one dot per measured point; the profiles' points and the default marked."""
    pts = [p for p in result.points if p.trials and math.isfinite(p.metric("ttft_p99"))]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p.metric("ttft_p99") for p in pts], [p.mean for p in pts], color="0.6", label="measured points")
    for p in pts:
        ax.annotate(str(p.index), (p.metric("ttft_p99"), p.mean), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    marks = {default_point: ("default", "s", "tab:blue")}
    for i, (name, prof) in enumerate(profiles.items()):
        if prof["point"] in marks:  # one marker per point, every name it stands for in the label
            label, marker, color = marks[prof["point"]]
            marks[prof["point"]] = (f"{label}+{name}", marker, color)
        else:
            marks[prof["point"]] = (name, "*", ("tab:red", "tab:green", "tab:purple")[i % 3])
    for idx, (label, marker, color) in marks.items():
        p = next((p for p in pts if p.index == idx), None)
        if p is not None:
            ax.scatter([p.metric("ttft_p99")], [p.mean], marker=marker, s=160, color=color, label=label, zorder=3)
    ax.set_xlabel("TTFT p99 (s)")
    ax.set_ylabel("goodput (req/s meeting SLOs)")
    ax.set_title("tune: goodput vs TTFT p99")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic.open_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "-"


def _p(p: float | None) -> str:
    return "n/a (one trial each)" if p is None else f"{p:.3f}"


def _finite(x: Any) -> Any:
    """NaN and infinities (a point with no successful request) as null: JSON has no NaN."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
