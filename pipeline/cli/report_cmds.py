"""report: what a finished run measured and where its reports and logs are; one HTML page of it."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli import common
from pipeline.cli.output import Output
from pipeline.cli.recipe_cmds import ARTIFACTS


@click.command()
@click.argument("run_ref", metavar="[RUN]", default="latest")
@click.option("--html", "html_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Write one self-contained HTML report (gate tables, the gates' reports, plots embedded).")
@click.option("--open", "open_browser", is_flag=True,
              help="Write the HTML report (to FILE, or artifacts/runs/RUN/report.html) and open it in a browser.")
@ARTIFACTS
@common
def report(run_ref: str, html_file: Path | None, open_browser: bool, artifacts: Path, json_mode: bool) -> None:
    """A run's stages, gate tables, reports, plots and logs. RUN: a run id (or a unique prefix), the
    path of its record (artifacts/runs/RUN.json), or `latest` (the default)."""
    from pipeline.cli.finale import gate_table
    from pipeline.runner.report import find_record, load_report, render_html

    out = Output(json_mode=json_mode)
    rep = load_report(find_record(run_ref, artifacts))
    r = rep.record
    secs = f" in {rep.seconds:.1f}s" if rep.seconds is not None else ""
    out.human(f"[bold]run {r.run_id}[/] {r.recipe_name} ({r.recipe}): {r.status}{secs}")
    if r.error:
        out.human(f"  error: {r.error}", markup=False)
    for s in r.stages:
        verdict = "" if s.passed is None else (" PASS" if s.passed else " FAIL")
        out.human(f"  {s.name:10} {s.status:8} {s.seconds:7.1f}s{verdict}  {s.reason}", markup=False)
    if rep.gates:
        out.human("")
        out.human(gate_table(rep.gates))
    files = rep.of_kind("report", "markdown", "plot", "server-log")
    if files:
        out.human("\n[bold]reports[/]:")
        for a in files:
            out.human(f"  {a.stage:10} {a.kind:10} {a.path}", markup=False)
    logs = rep.of_kind("log")
    if logs:
        out.human(f"\n[bold]logs[/] ({r.log_dir}):", markup=True)
        for a in logs:
            out.human(f"  {a.stage:10} {a.path}", markup=False)
    result = rep.to_json()
    if open_browser and html_file is None:
        html_file = rep.record_path.parent / r.run_id / "report.html"
    if html_file is not None:
        from pipeline.util import atomic

        atomic.write_text(html_file, render_html(rep))
        html_file.chmod(0o644)  # made to be shared (a CI artifact, a mail); mkstemp gave 0600
        out.human(f"\n[bold]html[/]: {html_file}")
        result["html"] = str(html_file)
        if open_browser:
            import webbrowser

            if not webbrowser.open(html_file.resolve().as_uri()):
                out.human("no browser here: open the file above")
    out.result(result)


def register(group: click.Group) -> None:
    group.add_command(report)
