"""validate, plan, run, schema: the recipe-level commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cli import common
from pipeline.cli.output import Output
from pipeline.errors import RecipeError

ARTIFACTS = click.option("--artifacts", type=click.Path(path_type=Path), default=Path("artifacts"),
                         show_default=True, envvar="TRTBUILD_ARTIFACTS",
                         help="Local store of stage outputs, run records and caches.")


@click.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
@common
def validate(recipes: tuple[Path, ...], json_mode: bool) -> None:
    """Check recipes; report every problem as FILE:LINE: field: message."""
    from pipeline.recipe.load import load_recipe
    from pipeline.recipe.schema import COMMIT_RE

    out = Output(json_mode=json_mode)
    problems: list[str] = []
    report = []
    for path in recipes:
        try:
            loaded = load_recipe(path)
        except RecipeError as e:
            problems.extend(e.problems)
            report.append({"recipe": str(path), "ok": False, "problems": e.problems})
            continue
        warnings = []
        src = loaded.recipe.source
        if src.revision is not None and not COMMIT_RE.match(src.revision):
            warnings.append(f"{path}: source.revision '{src.revision}' can move; pin a 40-hex commit "
                            "for reproducible builds (the resolved commit is recorded either way)")
        for w in warnings:
            out.human(f"[yellow]warning:[/] {w}")
        out.human(f"[green]ok[/] {path} ({loaded.recipe.name}, {loaded.recipe.target.gpu}, "
                  f"{loaded.recipe.build.backend}, {loaded.recipe.quantize.algo}/"
                  f"{loaded.recipe.quantize.kv_cache})")
        report.append({"recipe": str(path), "ok": True, "name": loaded.recipe.name,
                       "digest": loaded.digest, "warnings": warnings})
    out.result({"recipes": report, "ok": not problems})
    if problems:
        raise RecipeError(problems)


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@ARTIFACTS
@common
def plan(recipe: Path, artifacts: Path, json_mode: bool) -> None:
    """Show each stage's fingerprint and whether it is cached or will run, and why."""
    from pipeline.recipe.load import load_recipe
    from pipeline.runner.runner import Runner

    out = Output(json_mode=json_mode)
    loaded = load_recipe(recipe)
    planned = Runner(loaded, artifacts=artifacts).plan()
    out.human(f"[bold]{loaded.recipe.name}[/] ({recipe}) recipe digest {loaded.digest[:12]}")
    for p in planned:
        color = {"cached": "green", "stale": "yellow"}.get(p.status, "dim")
        fp = (p.fingerprint or "?")[:12]
        out.human(f"  [{color}]{p.status:8}[/] {p.name:10} {fp:12}  {p.reason}")
    out.result({"recipe": str(recipe), "name": loaded.recipe.name, "digest": loaded.digest,
                "stages": [{"name": p.name, "status": p.status, "fingerprint": p.fingerprint,
                            "reason": p.reason} for p in planned]})


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--from", "from_stage", help="Re-run from this stage (earlier stages must be cached).")
@click.option("--until", help="Stop after this stage.")
@click.option("--force", is_flag=True, help="Re-run every stage in range even if cached.")
@click.option("--record-references", is_flag=True,
              help="Measure the accuracy gate again and write its baseline task scores into the references "
                   "YAML under model/quant/kv (old -> new printed); they apply from the next run.")
@ARTIFACTS
@common
def run(recipe: Path, from_stage: str | None, until: str | None, force: bool, record_references: bool,
        artifacts: Path, json_mode: bool) -> None:
    """Run the pipeline: fetch, quantize, build, accuracy, throughput, release, publish."""
    from pipeline.errors import TrtbuildError, UsageError
    from pipeline.recipe.load import load_recipe
    from pipeline.runner.events import ConsoleReporter
    from pipeline.runner.runner import Runner
    from pipeline.runner.stage import STAGE_ORDER

    out = Output(json_mode=json_mode)
    loaded = load_recipe(recipe)
    if record_references:
        acc = loaded.recipe.gates.accuracy
        if not acc.enabled or not acc.tasks:
            raise UsageError(f"--record-references: {recipe} has no accuracy tasks to record "
                             "(gates.accuracy.enabled / gates.accuracy.tasks); add tasks or drop the option")
        at = STAGE_ORDER.index("accuracy")
        if until in STAGE_ORDER and STAGE_ORDER.index(until) < at:
            raise UsageError(f"--record-references needs the accuracy stage; --until {until} stops before it")
        if from_stage in STAGE_ORDER and STAGE_ORDER.index(from_stage) > at:
            raise UsageError(f"--record-references needs the accuracy stage; --from {from_stage} starts after it")
    reporter = ConsoleReporter(json_mode=json_mode, console=out.err)
    runner = Runner(loaded, artifacts=artifacts, reporter=reporter,
                    options={"record_references": record_references})
    out.human(f"[bold]trtbuild run[/] {recipe} ({loaded.recipe.name})")
    record = None
    try:
        record = runner.run(from_stage=from_stage, until=until, force=force)
    except TrtbuildError:
        raise
    finally:
        # the summary is printed whatever happened, so CI can read how far the run got
        rec = record.summary() if record is not None else _latest_record(artifacts, loaded.recipe.name)
        if rec is not None:
            out.result(rec)
    out.human(f"[green]run {record.run_id} succeeded[/] in {record.summary()['seconds']:.1f}s")


def _latest_record(artifacts: Path, name: str) -> dict[str, object] | None:
    runs = sorted((artifacts / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in runs:
        data = json.loads(p.read_text())
        if data.get("recipe_name") == name:
            return {k: data[k] for k in ("run_id", "recipe", "status", "error")} | {
                "stages": [{k: s[k] for k in ("name", "status", "fingerprint", "seconds", "outputs",
                                              "reason", "passed")} for s in data["stages"]]}
    return None


@click.command()
@click.option("--check", "check_file", type=click.Path(path_type=Path),
              help="Fail if this file differs from the generated schema.")
@common
def schema(check_file: Path | None, json_mode: bool) -> None:
    """Print the recipe JSON schema."""
    from pipeline.recipe.schema import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if check_file is not None:
        if not check_file.is_file() or check_file.read_text() != text:
            raise click.ClickException(f"{check_file} is out of date; regenerate it with "
                                       f"`trtbuild schema > {check_file}`")
        return
    click.echo(text, nl=False)


def register(group: click.Group) -> None:
    for cmd in (validate, plan, run, schema):
        group.add_command(cmd)
