"""The accuracy stage's lm-eval part: serve both sides, run the harness, pair the outcomes.

Baseline first (its outcomes may come from the cache: they depend only on the source, the tasks
and the harness), then the candidate; each side's server runs only while its harness runs, so
two large models are never loaded at once.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import StageError
from pipeline.eval import endpoints, lmeval, lmeval_cache
from pipeline.recipe.load import LoadedRecipe, interpolate_string
from pipeline.runner.stage import StageContext
from pipeline.util.hashing import digest_dir, digest_obj


def measure(ctx: StageContext, task_cfgs: list[Any]) -> list[Any]:
    """lm-eval tasks against the candidate's and the baseline's OpenAI endpoints, paired per document."""
    r = ctx.recipe
    opts = r.gates.accuracy.lm_eval
    source = Path(ctx.inputs["fetch"].outputs["checkpoint"])
    bundle = Path(ctx.inputs["build"].outputs["bundle"])
    settings = settings_for(ctx.loaded)
    tasks = [lmeval.LmEvalTask(t.name, t.data, t.metric, t.filter, t.num_fewshot, t.limit) for t in task_cfgs]
    out = ctx.workdir / "lm-eval"
    sides: dict[str, lmeval.SideRun] = {}
    for side in ("baseline", "candidate"):
        srv = getattr(opts, side)
        kind = endpoints.resolved_kind(side, srv, r.build.backend)
        cached = None
        if side == "baseline" and kind != "endpoint":
            key = {"source": ctx.inputs["fetch"].digest, "server": [kind, srv.python, srv.extra_args],
                   "tasks": [t.__dict__ for t in tasks], "lm_eval": lmeval_cache.harness_version(settings.python),
                   "settings": [settings.max_length, settings.model_args, settings.extra_args, settings.seed],
                   "task_files": task_files_digest(ctx.loaded)}
            cached = lmeval_cache.path_for(ctx.artifacts / "cache" / "lm-eval-baseline", key)
            if (kept := lmeval_cache.load(cached)) is not None:
                sides[side] = kept
                ctx.reporter.info(f"lm-eval baseline from cache ({cached.name[:12]}; measured in {kept.seconds:.1f}s)")
                continue
        with contextlib.ExitStack() as stack:
            what = f"starting {kind} server" if kind != "endpoint" else f"endpoint {srv.url}"
            with ctx.progress(f"lm-eval {side}: {what}"):
                endpoint = stack.enter_context(endpoints.serve(side, srv, r, source=source, bundle=bundle,
                                                               workdir=ctx.workdir,
                                                               recipe_dir=ctx.loaded.path.parent))
            with ctx.progress(f"lm-eval {side}: {', '.join(t.task for t in tasks)}"):
                sides[side] = lmeval.run_side(settings, tasks, endpoint, out, label=side)
        if cached is not None:
            lmeval_cache.save(cached, sides[side])
        ctx.reporter.info(f"lm-eval {side} ({kind}): {sides[side].seconds:.1f}s")
    return [lmeval.pair(t, sides["baseline"].samples[t.name], sides["candidate"].samples[t.name]) for t in tasks]


def settings_for(loaded: LoadedRecipe) -> lmeval.Settings:
    """How the harness runs for this recipe (the accuracy stage and `plan --explain` both use it)."""
    r = loaded.recipe
    opts = r.gates.accuracy.lm_eval
    return lmeval.Settings(
        python=interpolate_string(opts.python) if opts.python else sys.executable,
        include_path=include_path(loaded, opts.include_path), num_concurrent=opts.num_concurrent,
        batch_size=opts.batch_size, max_length=r.build.max_seq_len, request_timeout_s=opts.request_timeout_s,
        run_timeout_s=float(opts.run_timeout_s), extra_args=tuple(opts.extra_args),
        model_args=tuple((k, str(v)) for k, v in opts.model_args.items()))


def task_files_digest(loaded: LoadedRecipe) -> str:
    from pipeline.eval.lmeval import SHIPPED_TASKS
    from pipeline.eval.tasks import DATA

    inc = loaded.recipe.gates.accuracy.lm_eval.include_path
    dirs = [SHIPPED_TASKS, DATA] if inc is None else [include_path(loaded, inc)]
    return digest_obj([digest_dir(d) for d in dirs])


def include_path(loaded: LoadedRecipe, path: str | None) -> Path:
    from pipeline.eval.lmeval import SHIPPED_TASKS

    if path is None:
        return SHIPPED_TASKS
    p = Path(interpolate_string(path))
    p = p if p.is_absolute() else loaded.path.parent / p
    if not p.is_dir():
        raise StageError("accuracy", f"{loaded.path}: gates.accuracy.lm_eval.include_path {p} is not a directory")
    return p.resolve()
