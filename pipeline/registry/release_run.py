"""The release's MLflow run: what a reviewer opens, for a released bundle and for one a gate refused.

A released bundle's run holds stage times, gate metrics, gate reports and plots, the recipe, the
bundle manifest and a description (run_page.describe); its version links back to it. A run whose
gate failed gets the same run, status FAILED and a FAIL description, and registers no version: the
release stage does not run then, but an operator looks in MLflow for why nothing was released.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.registry import run_page

if TYPE_CHECKING:
    from pipeline.registry.mlflow_registry import MlflowRegistry, RunContext
    from pipeline.runner.stage import StageContext

TAG_REFUSED = "trtbuild.refused"  # on a gate-failed run: what it stands for (one run per refusal)


@dataclass
class Logged:
    views: list[run_page.GateView] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    times: list[run_page.StageTime] = field(default_factory=list)


def log_pipeline(ctx: StageContext, run: RunContext, bundle_dir: Path) -> Logged:
    """Stage times and gate metrics, gate reports and plots under gates/, bundle manifest, recipe."""
    out = Logged(times=run_page.stage_times(ctx.earlier, ctx.run))
    metrics: dict[str, float] = run_page.stage_metrics(out.times) if out.times else {}
    for name in run_page.GATES:
        res = ctx.inputs.get(name)
        # a disabled gate's result has no directory (Path() would be the cwd)
        if res is None or res.fingerprint == "disabled":
            continue
        metrics.update({f"{name}.{k}": float(v) for k, v in (res.summary.get("metrics") or {}).items()
                        if isinstance(v, int | float)})
        for f in sorted({*res.dir.glob(f"{name}*"), *res.dir.glob("*.png")}):
            run.log_artifact(f, "gates")
            out.artifacts.append(f"gates/{f.name}")
        if res.passed is not None:
            out.views.append(run_page.gate_view(name, res))
    tune = ctx.inputs.get("tune")
    if tune is not None and tune.fingerprint != "disabled":  # the tune report, plot and figures
        metrics.update({k: float(v) for k, v in (tune.summary.get("metrics") or {}).items()
                        if isinstance(v, int | float)})
        for f in sorted(tune.dir.glob("tune.*")):
            run.log_artifact(f, "tune")
            out.artifacts.append(f"tune/{f.name}")
    if metrics:
        run.log_metrics(metrics)
    run.log_artifact(bundle_dir / "manifest.json", "bundle")
    run.log_artifact(ctx.loaded.path, "recipe")
    return out


def refusal_key(ctx: StageContext) -> str:
    """The same build judged by the same gate results is one refusal, however often it is re-run."""
    parts = [f"{n}={ctx.inputs[n].fingerprint}" for n in ("build", *run_page.GATES) if n in ctx.inputs]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _existing(registry: MlflowRegistry, experiment: str, key: str) -> str | None:
    with registry.errors("search runs"):
        exp = registry.client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        found = registry.client.search_runs([exp.experiment_id], f"tags.`{TAG_REFUSED}` = '{key}'", max_results=1)
    return str(found[0].info.run_id) if found else None


def record_refusal(ctx: StageContext) -> str:
    """An MLflow run (status FAILED) for a build a gate refused: verdicts, reports, plots, no version.

    Returns its run id; a second call for the same build and gate results returns the first run's.
    """
    from pipeline.registry.mlflow_registry import open_registry

    r = ctx.recipe.release
    build = ctx.inputs["build"]
    bundle_dir = Path(build.outputs["bundle"])
    bundle_id = str(build.summary["bundle_id"])
    registry = open_registry(r.registry)
    key = refusal_key(ctx)
    if (found := _existing(registry, r.experiment, key)) is not None:
        return found
    with registry.start_run(r.experiment, ctx.recipe.name, params=ctx.loaded.declared,
                            tags={"bundle_digest": bundle_id, "recipe_digest": ctx.loaded.digest, TAG_REFUSED: key},
                            started=ctx.run.started if ctx.run is not None else None) as run:
        logged = log_pipeline(ctx, run, bundle_dir)
        ended = time.time()
        note = run_page.describe(
            run_id=run.run_id, experiment_id=run.experiment_id, recipe=ctx.recipe.name, gates=logged.views,
            times=logged.times, bundle_id=bundle_id, store_uri=None, model=r.model_name, version=None,
            alias=r.alias, artifacts=logged.artifacts, record=ctx.run, ended=ended)
        run.set_tags({run_page.NOTE_TAG: note, **run_page.stage_tags(logged.times, ctx.run, ended)})
        run.end("FAILED")
    return run.run_id
