"""What a finished run left behind, read back from its run record: the gate tables, the reports
and plots the gate stages wrote, and the logs; and one self-contained HTML page of it all.

The HTML has no network resources (no scripts, stylesheets or images by URL): the plots are
embedded as base64 PNGs, so the file can be attached to a CI job or mailed as it is.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.runner.records import RunRecord

GATES = ("accuracy", "throughput")


def gate_rows(record: RunRecord) -> list[dict[str, Any]]:
    """One row per gate check: gate, check, value, bound, passed."""
    rows: list[dict[str, Any]] = []
    for gate in GATES:
        st = next((s for s in record.stages if s.name == gate), None)
        if st is None or "report" not in st.outputs or not Path(st.outputs["report"]).is_file():
            continue
        report = json.loads(Path(st.outputs["report"]).read_text())
        if gate == "accuracy":
            for c in report.get("checks", []):
                rows.append({"gate": gate, "check": c["name"], "value": c["value"],
                             "bound": f"{c['op']} {c['threshold']:g}", "passed": c["passed"]})
        else:
            for c in report.get("criteria", []):
                value = c["ratio"] if str(c["bound"]).startswith("ratio") else c["candidate"]
                rows.append({"gate": gate, "check": f"{c['workload']}@{c['concurrency']} {c['metric']}",
                             "value": value, "bound": c["bound"], "passed": c["passed"],
                             "candidate": c["candidate"], "baseline": c["baseline"]})
    return rows


def find_record(ref: str, artifacts: Path) -> Path:
    """A run record from a run id (or a unique prefix of one), a path to its JSON, or `latest`."""
    runs = artifacts / "runs"
    as_path = Path(ref)
    if ref != "latest" and as_path.suffix == ".json" and as_path.is_file():
        return as_path
    records = sorted(runs.glob("*.json")) if runs.is_dir() else []
    if not records:
        raise UsageError(f"no run records under {runs}; run `trtbuild run RECIPE` first, or pass --artifacts")
    if ref == "latest":
        return max(records, key=_started)
    exact = runs / f"{ref}.json"
    if exact.is_file():
        return exact
    matches = [p for p in records if p.stem.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    newest = ", ".join(p.stem for p in sorted(records, key=_started)[-3:])
    if not matches:
        raise UsageError(f"run '{ref}': no record {exact} (newest: {newest}); give a run id, a record path or "
                         "'latest'")
    raise UsageError(f"run '{ref}' matches {len(matches)} records: {', '.join(p.stem for p in matches[:5])}")


def _started(path: Path) -> float:
    try:
        return float(json.loads(path.read_text()).get("started") or 0.0)
    except (OSError, ValueError):
        return path.stat().st_mtime


@dataclass
class Artifact:
    stage: str
    kind: str  # report | markdown | plot | log | server-log
    path: Path

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "kind": self.kind, "path": str(self.path), "exists": self.path.is_file()}


@dataclass
class RunReport:
    record_path: Path
    record: RunRecord
    gates: list[dict[str, Any]]
    artifacts: list[Artifact] = field(default_factory=list)

    def of_kind(self, *kinds: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.kind in kinds]

    @property
    def seconds(self) -> float | None:
        return None if self.record.finished is None else self.record.finished - self.record.started

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "run_id": r.run_id, "recipe": r.recipe, "recipe_name": r.recipe_name, "status": r.status,
            "error": r.error, "record": str(self.record_path), "log_dir": r.log_dir,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "stages": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3), "reason": s.reason,
                        "passed": s.passed, "log": s.log} for s in r.stages],
            "gates": self.gates, "artifacts": [a.to_json() for a in self.artifacts],
        }


def load_report(record_path: Path) -> RunReport:
    record = RunRecord.load(record_path)
    found: list[Artifact] = []
    for st in record.stages:
        if st.log:
            found.append(Artifact(st.name, "log", Path(st.log)))
        if st.name not in GATES or st.status not in ("done", "skipped"):
            continue
        if "report" in st.outputs:
            found.append(Artifact(st.name, "report", Path(st.outputs["report"])))
        if "markdown" in st.outputs:
            found.append(Artifact(st.name, "markdown", Path(st.outputs["markdown"])))
        out_dir = Path(st.outputs.get("report", "")).parent
        if st.outputs.get("report") and out_dir.is_dir():
            found += [Artifact(st.name, "plot", p) for p in sorted(out_dir.glob("*.png"))]
            found += [Artifact(st.name, "server-log", p) for p in sorted(out_dir.glob("*.log"))]
    return RunReport(record_path, record, gate_rows(record), found)


# ---------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#070;font-weight:bold}.fail{color:#b00;font-weight:bold}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
code{background:#f2f2f2;padding:0 .2em}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _verdict(passed: object) -> str:
    if passed is None:
        return ""
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def _value(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _e(v)


def render_html(report: RunReport) -> str:
    """One self-contained page: stages, gate tables, the gates' Markdown reports, plots inline, log paths."""
    r = report.record
    secs = f" in {report.seconds:.1f}s" if report.seconds is not None else ""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>trtbuild run {_e(r.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>trtbuild run <code>{_e(r.run_id)}</code></h1>",
        f"<p>recipe <code>{_e(r.recipe)}</code> ({_e(r.recipe_name)}), started "
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(r.started)))}: "
        f"<b>{_e(r.status)}</b>{_e(secs)}</p>",
    ]
    if r.error:
        parts.append(f"<p class=\"fail\">{_e(r.error)}</p>")
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds</th><th>verdict</th>"
                 "<th>reason</th><th>log</th></tr>")
    for s in r.stages:
        parts.append(f"<tr><td>{_e(s.name)}</td><td>{_e(s.status)}</td><td class=\"num\">{s.seconds:.1f}</td>"
                     f"<td>{_verdict(s.passed)}</td><td>{_e(s.reason)}</td>"
                     f"<td>{'<code>' + _e(s.log) + '</code>' if s.log else ''}</td></tr>")
    parts.append("</table>")
    if report.gates:
        parts.append("<h2>Gates</h2><table><tr><th>gate</th><th>check</th><th>value</th><th>bound</th>"
                     "<th>candidate</th><th>baseline</th><th>verdict</th></tr>")
        for g in report.gates:
            parts.append(f"<tr><td>{_e(g['gate'])}</td><td>{_e(g['check'])}</td>"
                         f"<td class=\"num\">{_value(g['value'])}</td><td>{_e(g['bound'])}</td>"
                         f"<td class=\"num\">{_value(g.get('candidate', ''))}</td>"
                         f"<td class=\"num\">{_value(g.get('baseline', ''))}</td><td>{_verdict(g['passed'])}</td></tr>")
        parts.append("</table>")
    for a in report.of_kind("markdown"):
        if a.path.is_file():
            parts.append(f"<h2>{_e(a.stage)} report</h2><p><code>{_e(a.path)}</code></p>"
                         f"<pre>{_e(a.path.read_text(errors='replace'))}</pre>")
    plots = [a for a in report.of_kind("plot") if a.path.is_file()]
    if plots:
        parts.append("<h2>Plots</h2>")
        for a in plots:
            data = base64.b64encode(a.path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt=\"{_e(a.stage)}: {_e(a.path.name)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{_e(a.stage)}: <code>{_e(a.path)}</code></figcaption></figure>")
    logs = report.of_kind("log", "server-log", "report")
    if logs:
        parts.append("<h2>Files</h2><ul>")
        for a in logs:
            parts.append(f"<li>{_e(a.stage)} {_e(a.kind)}: <code>{_e(a.path)}</code></li>")
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
