"""release: the bundle into the store (immutable) and a version into the MLflow registry."""

from __future__ import annotations

import time
from typing import Any

from pipeline.bundle import load_bundle
from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage, StageContext, StageOutput, StageResult
from pipeline.stages.common import fields, served_bundle


class ReleaseStage(Stage):
    name = "release"
    inputs = ("build", "tune", "accuracy", "throughput")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return fields(loaded.recipe.release, exclude={"enabled", "upload_concurrency"})

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.release.enabled

    def still_valid(self, ctx: StageContext, result: StageResult) -> str | None:
        from pipeline.store import open_store

        if not open_store(ctx.recipe.release.store).exists(str(result.summary.get("bundle_id"))):
            return "the bundle is no longer in the store"
        return None

    def gates_failed(self, ctx: StageContext) -> tuple[str, dict[str, Any]] | None:
        """A failed gate still leaves an MLflow run (status FAILED, FAIL verdicts, reports); no version."""
        from pipeline.registry.release_run import record_refusal

        if "build" not in ctx.inputs:
            return None
        run_id = record_refusal(ctx)
        r = ctx.recipe.release
        return (f"gate-failed run {run_id} recorded in MLflow {r.registry} (experiment '{r.experiment}'); "
                f"no version of {r.model_name} registered", {"run_id": run_id, "registered": False})

    def run(self, ctx: StageContext) -> StageOutput:
        from pipeline.registry.mlflow_registry import open_registry
        from pipeline.store import open_store

        r = ctx.recipe.release
        bundle_dir, bundle_id = served_bundle(ctx)  # the tuned bundle (with its profiles) when tune ran
        store = open_store(r.store, concurrency=r.upload_concurrency)
        bar = ctx.transfer_progress()
        try:
            stored = store.put(bundle_dir, progress=bar)
        finally:
            bar.close()
        ctx.reporter.info(f"stored bundle {bundle_id[:12]} at {stored.uri} ({stored.uploaded_bytes} bytes uploaded, "
                          f"{stored.skipped_files} files already there)")
        gates = {name: ctx.inputs[name].passed for name in ("accuracy", "throughput")
                 if name in ctx.inputs and ctx.inputs[name].passed is not None}
        registry = open_registry(r.registry)
        from pipeline.registry import run_page
        from pipeline.registry.release_run import log_pipeline

        # the declared recipe: environment values (endpoints, secrets) never reach MLflow
        with registry.start_run(r.experiment, ctx.recipe.name, params=ctx.loaded.declared,
                                tags={"bundle_digest": bundle_id, "recipe_digest": ctx.loaded.digest},
                                started=ctx.run.started if ctx.run is not None else None) as run:
            logged = log_pipeline(ctx, run, bundle_dir)
            # the bundle's own record (the build stage's summary has no provenance)
            bundle = load_bundle(bundle_dir, verify=False)
            git = bundle.manifest["provenance"].get("git_commit")
            from pipeline.tune.profiles import registry_tag

            profiles = registry_tag(bundle)
            version = registry.register_bundle(
                r.model_name, stored.uri, bundle_id, run_id=run.run_id,
                tags={"bundle_digest": bundle_id, "recipe_digest": ctx.loaded.digest, "git_commit": git or "",
                      **{f"gate.{k}": "pass" if v else "fail" for k, v in gates.items()},
                      **({"profiles": profiles} if profiles else {})},
                description=run_page.version_note(
                    recipe=ctx.recipe.name, recipe_digest=ctx.loaded.digest, bundle_id=bundle_id,
                    store_uri=stored.uri, gates=logged.views, run_id=run.run_id, experiment_id=run.experiment_id,
                    git_commit=git))
            registry.set_alias(r.model_name, r.alias, version)
            ended = time.time()
            note = run_page.describe(
                run_id=run.run_id, experiment_id=run.experiment_id, recipe=ctx.recipe.name, gates=logged.views,
                times=logged.times, bundle_id=bundle_id, store_uri=stored.uri, model=r.model_name,
                version=version, alias=r.alias, artifacts=logged.artifacts, record=ctx.run, ended=ended)
            run.set_tags({run_page.NOTE_TAG: note, **run_page.stage_tags(logged.times, ctx.run, ended)})
        ctx.reporter.info(f"registered {r.model_name} version {version} with alias '{r.alias}'")
        return StageOutput(outputs={"bundle_uri": stored.uri},
                           summary={"bundle_id": bundle_id, "store_uri": stored.uri, "model": r.model_name,
                                    "version": version, "alias": r.alias, "run_id": run.run_id,
                                    "uploaded_bytes": stored.uploaded_bytes, "uploaded_files": stored.uploaded_files,
                                    "skipped_files": stored.skipped_files})
