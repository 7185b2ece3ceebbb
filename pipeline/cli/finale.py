"""What `trtbuild run` shows at the end: the gates, the release, a served generation, next steps.

Everything here reads what the stages wrote (their reports and summaries in the run record), so a
re-run where every stage was skipped shows the same picture as the run that did the work.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.table import Table

from pipeline.cli.output import Output
from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.records import RunRecord
from pipeline.runner.report import gate_rows


def gate_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="gates", title_justify="left", show_edge=False)
    for col in ("gate", "check", "value", "bound", "verdict"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for r in rows:
        verdict = "[green]PASS[/]" if r["passed"] else "[red]FAIL[/]"
        table.add_row(r["gate"], r["check"], f"{r['value']:.4g}", str(r["bound"]), verdict)
    return table


def next_commands(loaded: LoadedRecipe, record: RunRecord, env_file: Path | None) -> list[str]:
    """The commands an operator runs next, with this run's names filled in."""
    r = loaded.recipe
    cmds: list[str] = []
    if env_file is not None:
        cmds.append(f"set -a; . {shlex.quote(str(env_file))}; set +a   # the local services' environment")
    release = _stage(record, "release")
    if release is not None and release.summary.get("version") is not None:
        model = shlex.quote(r.release.model_name)
        cmds += [f"trtbuild list {model}",
                 f"trtbuild promote {model} --version {release.summary['version']}   "
                 "# MLflow alias 'production' -> this version",
                 f"trtbuild rollback {model} --registry --no-triton   # 'production' back one version"]
    if _stage(record, "publish") is not None:
        cmds.append(f"trtbuild rollback {shlex.quote(r.triton_model_name)}   "
                    "# Triton serves the previous version again")
    if env_file is not None:
        cmds.append("trtbuild local down")
    return cmds


def _stage(record: RunRecord, name: str) -> Any:
    st = next((s for s in record.stages if s.name == name), None)
    return st if st is not None and st.status in ("done", "skipped") else None


def served_generation(loaded: LoadedRecipe, out: Output, *, max_tokens: int = 32) -> dict[str, Any] | None:
    """Stream a generation from the model publish put on a live server; None without one.

    Failures are reported, not raised: the pipeline has already succeeded, and publish smoke-
    tested this version before switching to it.
    """
    from pipeline.errors import ServiceError
    from pipeline.triton.client import LLMClient

    p = loaded.recipe.publish
    if not p.enabled or not p.server_url:
        return None
    model, prompt = loaded.recipe.triton_model_name, p.smoke_prompt
    out.human(f"\n[bold]served by Triton[/] ({p.server_url}, model {model}):")
    out.human(f"[dim]{prompt}[/]", end="")
    live = not out.json_mode

    def show(piece: str) -> None:
        if live:
            out.err.print(piece, end="", markup=False, highlight=False)

    try:
        gen = LLMClient(p.server_url, timeout=120.0).stream(model, prompt, max_tokens=max_tokens,
                                                           on_piece=show)
    except (ServiceError, OSError) as e:
        out.human(f"\n[yellow]warning:[/] no generation from the served model: {e}")
        return {"model": model, "error": str(e)}
    if not live:
        out.human(gen.text, markup=False)
    out.human("")
    return {"model": model, "version": gen.model_version, "prompt": prompt, "text": gen.text,
            "ttft_s": gen.ttft_s, "seconds": gen.elapsed_s}


def show(loaded: LoadedRecipe, record: RunRecord, out: Output, env_file: Path | None) -> dict[str, Any]:
    """Print the end-of-run picture on stderr and return it for --json."""
    rows = gate_rows(record)
    if rows:
        out.human("")
        out.human(gate_table(rows))
    summary: dict[str, Any] = {"gates": rows}
    release = _stage(record, "release")
    if release is not None:
        s = release.summary
        summary["release"] = s
        out.human(f"\n[bold]released[/] {s.get('model')} version {s.get('version')} "
                  f"(alias '{s.get('alias')}') in MLflow {loaded.recipe.release.registry}; "
                  f"bundle {s.get('store_uri')}")
    publish = _stage(record, "publish")
    if publish is not None:
        s = publish.summary
        summary["publish"] = s
        out.human(f"[bold]published[/] Triton model {s.get('model')} version {s.get('version')} "
                  f"in {s.get('repository')}")
        gen = served_generation(loaded, out)
        if gen is not None:
            summary["generation"] = gen
    cmds = next_commands(loaded, record, env_file)
    if cmds:
        out.human("\n[bold]next[/]:")
        for c in cmds:
            out.human(f"  {c}", markup=False)
    summary["next"] = cmds
    return summary
