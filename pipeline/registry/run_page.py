"""What the MLflow run page of a release says: stage times of the whole pipeline run as metrics,
and a Markdown description (gate verdicts, criterion lines, workloads, bundle, artifact links).

Pure functions of the earlier stages' results and the run record: the release stage logs what
they return through the registry's RunContext, so nothing here talks to MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from pipeline.runner.records import RunRecord
    from pipeline.runner.stage import StageResult

NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description
GATES = ("accuracy", "throughput")
_MAX_NOTE = 8000  # MLflow's limit on a tag value


@dataclass
class StageTime:
    name: str
    seconds: float
    cached: bool  # skipped in this run: `seconds` is what it took when it ran


@dataclass
class GateView:
    name: str
    passed: bool
    lines: list[tuple[bool, str]] = field(default_factory=list)  # (passed, criterion line)
    workloads: list[str] = field(default_factory=list)


def stage_times(earlier: Mapping[str, StageResult], record: RunRecord | None) -> list[StageTime]:
    """Every earlier stage of this run with an output, in run order; disabled ones left out."""
    status = {s.name: s.status for s in record.stages} if record is not None else {}
    return [StageTime(name, float(r.seconds), status.get(name) == "skipped")
            for name, r in earlier.items() if r.fingerprint != "disabled"]


def stage_metrics(times: Sequence[StageTime]) -> dict[str, float]:
    """`stage.<name>.seconds` for each stage and `stage.total.seconds` (cached ones at their original time)."""
    out = {f"stage.{t.name}.seconds": round(t.seconds, 3) for t in times}
    out["stage.total.seconds"] = round(sum(t.seconds for t in times), 3)
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def stage_tags(times: Sequence[StageTime], record: RunRecord | None, ended: float) -> dict[str, str]:
    """Which stage times are cached, and when the pipeline run started and reached the release."""
    tags = {f"stage.{t.name}.cached": "true" for t in times if t.cached}
    if record is not None:
        tags |= {"trtbuild.run_id": record.run_id, "trtbuild.pipeline.started": _iso(record.started),
                 "trtbuild.pipeline.ended": _iso(ended),
                 "trtbuild.pipeline.seconds": f"{ended - record.started:.1f}"}
    return tags


def _report(result: StageResult) -> dict[str, Any]:
    path = result.outputs.get("report")
    if path is None or not Path(path).is_file():
        return {}
    data = json.loads(Path(path).read_text())
    return data if isinstance(data, dict) else {}


def gate_view(name: str, result: StageResult) -> GateView:
    """A gate's verdict, each criterion with value and threshold, and what it was measured on.

    From the gate's report JSON; without one, the failed lines of its summary.
    """
    view = GateView(name, bool(result.passed))
    data = _report(result)
    if name == "accuracy" and data:
        from pipeline.eval.gate import Check

        view.lines = [(c["passed"], Check(**c).line()) for c in data.get("checks", [])]
        view.workloads = [f"{t['name']} ({t.get('kind', '?')}, n={t.get('n', '?')})" for t in data.get("tasks", [])]
        if data.get("teacher_forced"):
            tf = data["teacher_forced"]
            view.workloads.insert(0, f"teacher-forced text ({tf.get('tokens', '?')} tokens)")
    elif name == "throughput" and data:
        from pipeline.bench.criteria import CriterionResult

        view.lines = [(c["passed"], CriterionResult(**c).line()) for c in data.get("criteria", [])]
        view.workloads = [
            f"{w['name']} ({w.get('kind', '?')}, {w.get('num_prompts', '?')} prompts, input {w.get('input_len', '?')}"
            f" / output {w.get('output_len', '?')} tokens, concurrency {', '.join(map(str, w.get('concurrency', [])))})"
            for w in data.get("workloads", [])]
    else:
        view.lines = [(False, str(f)) for f in result.summary.get("failed") or []]
    return view


def _link(run_id: str, experiment_id: str, artifact: str) -> str:
    # hash routes of the MLflow UI: relative to whatever host and prefix serves the page
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{quote(artifact)}"


def _image(run_id: str, artifact: str) -> str:
    # the server's get-artifact route, relative to the page like the UI's own requests
    return f"get-artifact?path={quote(artifact, safe='')}&run_uuid={run_id}"


def _verdict(gates: Sequence[GateView]) -> str:
    if not gates:
        return "no gates enabled"
    return ", ".join(f"{g.name} {'PASS' if g.passed else 'FAIL'}" for g in gates)


def describe(*, run_id: str, experiment_id: str, recipe: str, gates: Sequence[GateView],
             times: Sequence[StageTime], bundle_id: str, store_uri: str | None, model: str, version: int | None,
             alias: str, artifacts: Sequence[str], record: RunRecord | None = None,
             ended: float | None = None) -> str:
    """The run's Markdown description; `artifacts` are the run's artifact paths to link.

    `store_uri` None: a gate failed, the bundle was neither stored nor registered.
    """
    overall = "PASS" if all(g.passed for g in gates) else "FAIL"
    head = f"# {recipe}: " + (f"gates {overall}" if gates else "no gates enabled")
    out = [head, ""]
    if store_uri is None:
        # what the reviewer of a refused build must see first: nothing was released
        out += [f"**Not released**: {_verdict(gates)}. The bundle was not stored, no version of `{model}` "
                f"was registered and alias `{alias}` did not move.", ""]
        registered = "nothing"
    elif version is not None:
        registered = f"`{model}` version {version} (alias `{alias}`)"
        # the UI shows ~3 lines of a description until "Show more": the verdicts go first
        out += [f"**Released** as {registered}: {_verdict(gates)}.", ""]
    else:
        registered = f"`{model}`"
    out += [f"- bundle: `{bundle_id}`", f"- store: `{store_uri or 'not stored'}`", f"- registered: {registered}"]
    if record is not None and ended is not None:
        out.append(f"- pipeline run `{record.run_id}`: started {_iso(record.started)}, reached the release "
                   f"{_iso(ended)} ({ended - record.started:.1f} s)")
    out.append("")
    for g in gates:
        out += [f"## {g.name.capitalize()} gate: {'PASS' if g.passed else 'FAIL'}", ""]
        out += [f"- {'PASS' if ok else '**FAIL**'}: {line}" for ok, line in g.lines] or ["- (no criteria recorded)"]
        if g.workloads:
            out += ["", "Measured on:", "", *[f"- {w}" for w in g.workloads]]
        out.append("")
    if times:
        # a list, not a table: the UI renders Markdown tables without borders or padding
        out += ["## Stage times", ""]
        out += [f"- {t.name}: {t.seconds:.1f} s" + (" (cached: time of the run that made it)" if t.cached else "")
                for t in times]
        out += [f"- total: {sum(t.seconds for t in times):.1f} s", ""]
    reports = [a for a in artifacts if a.endswith(".md")]
    plots = [a for a in artifacts if a.endswith(".png")]
    if reports or plots:
        out += ["## Artifacts", ""]
        out += [f"- [{a}]({_link(run_id, experiment_id, a)})" for a in reports + plots]
        out.append("")
        out += [f"![{a}]({_image(run_id, a)})" for a in plots]
        if plots:
            out.append("")
    text = "\n".join(out)
    if len(text) > _MAX_NOTE:
        tail = "\n\n(description cut at MLflow's limit; the gate reports under Artifacts have everything)\n"
        text = text[: _MAX_NOTE - len(tail)] + tail
    return text


def version_note(*, recipe: str, recipe_digest: str, bundle_id: str, store_uri: str, gates: Sequence[GateView],
                 run_id: str, experiment_id: str, git_commit: str | None = None) -> str:
    """A registered version's Markdown description: what it is, its verdicts, the run that released it."""
    out = [f"**{recipe}**: {_verdict(gates)}", "",
           f"- bundle: `{bundle_id}`", f"- store: `{store_uri}`", f"- recipe digest: `{recipe_digest}`"]
    if git_commit:
        out.append(f"- git commit: `{git_commit}`")
    for g in gates:
        failed = sum(1 for ok, _ in g.lines if not ok)
        out.append(f"- {g.name} gate: {'PASS' if g.passed else 'FAIL'} ({len(g.lines) - failed} of {len(g.lines)} "
                   "criteria met)")
    out += ["", f"Criteria, reports, plots and stage times: [the release run]"
                f"(#/experiments/{experiment_id}/runs/{run_id})"]
    return "\n".join(out) + "\n"
