"""validate, plan, run, schema: the recipe-level commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.cli import common
from pipeline.cli.output import Output
from pipeline.errors import RecipeError
from pipeline.recipe.load import LoadedRecipe

if TYPE_CHECKING:
    from pipeline.runner.capture import OutputCapture

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
        # the checks of `plan --explain` (GPU memory per phase, upstream records), files rendered and dropped
        plan_problems = _explain_problems(loaded)
        if plan_problems:
            problems.extend(plan_problems)
            report.append({"recipe": str(path), "ok": False, "problems": plan_problems})
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
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option("--changed-since", "changed_since", metavar="REF",
              help="Instead of one recipe's stages: the recipes that REF..HEAD changed (directly or "
                   "through extends), each with its GPU, for a CI build matrix.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github-matrix", "markdown"]), default="text",
              show_default=True, help="With --changed-since: github-matrix prints {\"include\": [...]} "
                                      "for strategy.matrix on stdout; markdown a table for a job summary.")
@click.option("--recipes-dir", type=click.Path(path_type=Path), default=Path("recipes"), show_default=True,
              help="With --changed-since: where the recipes are (bases in its subdirectories).")
@click.option("--explain", "explain_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Write what the run would do on its target into DIR: explain.json (every process with argv, "
                   "GPUs, memory, phase), triton_repo/ and llm_api_options.yaml, all checked against upstream's "
                   "records; exit 1 with each problem as a line.")
@ARTIFACTS
@common
def plan(recipe: Path | None, changed_since: str | None, fmt: str, recipes_dir: Path, explain_dir: Path | None,
         artifacts: Path, json_mode: bool) -> None:
    """Show each stage's fingerprint and whether it is cached or will run, and why.

    With --changed-since REF: which recipes the commits since REF change, for a CI matrix.
    With --explain DIR: what the run would do on its target (no GPU needed, nothing heavy runs).
    """
    from pipeline.errors import UsageError

    if recipe is not None and changed_since is not None:
        raise UsageError("give either a RECIPE or --changed-since REF, not both")
    if explain_dir is not None:
        if recipe is None:
            raise UsageError("--explain needs a RECIPE")
        _explain(recipe, explain_dir, artifacts, json_mode)
        return
    if changed_since is not None:
        _plan_changes(changed_since, fmt, recipes_dir, json_mode)
        return
    if recipe is None:
        raise UsageError("give a RECIPE, or --changed-since REF for the recipes a commit range changes")
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


def _explain_problems(loaded: LoadedRecipe) -> list[str]:
    import tempfile

    from pipeline.explain import explain

    with tempfile.TemporaryDirectory(prefix="trtbuild-validate-") as tmp:
        return explain(loaded, out_dir=Path(tmp)).problems


def _explain(recipe: Path, out_dir: Path, artifacts: Path, json_mode: bool) -> None:
    from pipeline.explain import write_explain
    from pipeline.recipe.load import load_recipe

    out = Output(json_mode=json_mode)
    loaded = load_recipe(recipe)
    ex = write_explain(loaded, out_dir, artifacts=artifacts)
    out.human(f"[bold]{loaded.recipe.name}[/] on {loaded.recipe.target.gpu} x{loaded.recipe.target.world_size}: "
              f"{out_dir / 'explain.json'}")
    for st in ex.stages:
        for p in st.processes:
            gpus = f"GPU {','.join(map(str, p.gpus))} {p.gpu_memory_gib:.1f} GiB" if p.gpus else "CPU"
            out.human(f"  {st.name:10} [{p.phase}] {p.role}: {gpus}")
        for n in st.notes:
            out.human(f"  {st.name:10} [dim]{n}[/]")
    for w in ex.warnings:
        out.human(f"[yellow]warning:[/] {w}")
    out.result(ex.to_json() | {"explain_dir": str(out_dir)})
    if ex.problems:
        raise RecipeError(ex.problems)


def _plan_changes(ref: str, fmt: str, recipes_dir: Path, json_mode: bool) -> None:
    from pipeline.gitops.changes import plan_changes

    out = Output(json_mode=json_mode or fmt == "json")
    res = plan_changes(ref, recipes_dir=recipes_dir)
    out.human(f"recipes changed since {ref} ({res.base_commit[:12]}..{res.head_commit[:12]}):")
    for p in res.planned:
        out.human(f"  [bold]{p.recipe}[/] ({p.name}) gpu {p.gpu} tp {p.tensor_parallel} runner {p.runner}: "
                  f"{'; '.join(p.because)}")
    if not res.planned:
        out.human("  none: nothing to build")
    for r in res.removed:
        out.human(f"  [yellow]removed[/] {r}: not planned (its released versions stay in the registry)")
    if fmt == "github-matrix" and not res.problems:
        click.echo(json.dumps(res.matrix(), separators=(",", ":")))
    elif fmt == "markdown":
        click.echo(res.markdown(), nl=False)
    else:
        out.result(res.to_json())
    if res.problems:
        raise RecipeError(res.problems)


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--from", "from_stage", help="Re-run from this stage (earlier stages must be cached).")
@click.option("--until", help="Stop after this stage.")
@click.option("--force", is_flag=True, help="Re-run every stage in range even if cached.")
@click.option("--local", "use_local", is_flag=True,
              help="Start (or reuse) `trtbuild local up` services (SeaweedFS, MLflow, tritonserver) and "
                   "run against them: their environment overrides the store, registry and Triton settings.")
@click.option("--record-references", is_flag=True,
              help="Measure the accuracy gate again and write its baseline task scores into the references "
                   "YAML under model/quant/kv (old -> new printed); they apply from the next run.")
@click.option("-v", "--verbose", is_flag=True,
              help="Stream the output of libraries and child processes (ModelOpt, transformers, MLflow, "
                   "servers) as it comes, instead of into a log per stage under artifacts/runs/RUN_ID/.")
@ARTIFACTS
@common
def run(recipe: Path, from_stage: str | None, until: str | None, force: bool, use_local: bool,
        record_references: bool, verbose: bool, artifacts: Path, json_mode: bool) -> None:
    """Run the pipeline: fetch, quantize, build, accuracy, throughput, release, publish.

    The terminal shows trtbuild's own lines and progress; what libraries and child processes print
    goes to artifacts/runs/RUN_ID/STAGE.log (named in the run record; a failed stage shows its last
    lines). --verbose streams everything instead.
    """
    import contextlib

    from pipeline.runner.capture import OutputCapture

    verbose = verbose or bool(click.get_current_context().find_root().params.get("verbose"))
    capture = OutputCapture(verbose=verbose)
    with contextlib.closing(capture):
        _run(recipe, from_stage, until, force, use_local, record_references, artifacts, json_mode, capture)


def _run(recipe: Path, from_stage: str | None, until: str | None, force: bool, use_local: bool,
         record_references: bool, artifacts: Path, json_mode: bool, capture: OutputCapture) -> None:
    from rich.console import Console

    from pipeline.cli import finale
    from pipeline.errors import UsageError
    from pipeline.recipe.load import load_recipe
    from pipeline.runner.events import ConsoleReporter
    from pipeline.runner.runner import Runner
    from pipeline.runner.stage import STAGE_ORDER

    out = Output(json_mode=json_mode)
    # our lines go to the terminal while fds 1 and 2 go to a stage's log
    out.err = Console(file=capture.terminal, highlight=False, soft_wrap=True)
    load_recipe(recipe)  # bad recipes fail before any service starts
    env_file = None
    if use_local:
        up_log = artifacts / "local" / "up.log"
        with capture.into(up_log):
            env_file = _use_local(artifacts, out)
    loaded = load_recipe(recipe)
    if env_file is not None:
        _check_local_repository(loaded, recipe)
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
                    options={"record_references": record_references}, capture=capture)
    out.human(f"[bold]trtbuild run[/] {recipe} ({loaded.recipe.name})")
    record = None
    try:
        record = runner.run(from_stage=from_stage, until=until, force=force)
    finally:
        # the summary is printed whatever happened, so CI can read how far the run got
        rec = record.summary() if record is not None else _latest_record(artifacts, loaded.recipe.name)
        last = record if record is not None else runner.last_record
        if last is not None:
            rec = (rec or {}) | {"finale": finale.show(loaded, last, out, env_file)}
        if rec is not None:
            out.result(rec)
    out.human(f"[green]run {record.run_id} succeeded[/] in {record.summary()['seconds']:.1f}s")


def _use_local(artifacts: Path, out: Output) -> Path:
    """Start the local services and put their environment into this process (recipes read it)."""
    import os

    from pipeline.cli.release_cmds import start_local

    root = artifacts / "local"
    repo = Path(os.environ.get("TRTBUILD_TRITON_REPO") or "triton_repo")
    env = start_local(root, repo, out)
    os.environ.update(env)
    return root / "local.env"


def _check_local_repository(loaded: LoadedRecipe, recipe: Path) -> None:
    """--local publishes through the local tritonserver: the recipe must publish where it serves."""
    import os

    from pipeline.errors import UsageError

    pub = loaded.recipe.publish
    served = os.environ["TRTBUILD_TRITON_REPO"]
    if pub.enabled and Path(pub.repository).resolve() != Path(served).resolve():
        raise UsageError(f"{recipe}: publish.repository is {pub.repository} but the local tritonserver serves "
                         f"{served}; drop publish.repository from the recipe (it defaults to "
                         "$TRTBUILD_TRITON_REPO) or run without --local")


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
