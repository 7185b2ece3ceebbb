"""publish: the bundle as the next version of a Triton model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.recipe.load import LoadedRecipe
from pipeline.repository.render import ServingOptions
from pipeline.runner.stage import Stage, StageContext, StageOutput, StageResult
from pipeline.stages.common import fields, served_bundle


def runtime_facts(loaded: LoadedRecipe) -> Any:
    """What this host offers: the detected GPU, or the CPU for the reference backend."""
    from pipeline.bundle import detect_runtime, facts_for_target

    return detect_runtime() or facts_for_target("cpu")


def switch_plan_of(loaded: LoadedRecipe) -> Any:
    """The switch strategy and KV fraction for this recipe's model (pipeline/gpu/schedule.py)."""
    from pipeline.gpu.schedule import switch_plan
    from pipeline.gpu.sizing import recipe_size

    size, _ = recipe_size(loaded.recipe, loaded.path.parent, quantized=True)
    return switch_plan(loaded.recipe, size)


class PublishStage(Stage):
    name = "publish"
    inputs = ("build", "tune", "release")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        # server_url says where to switch, not what is published: a restarted local server on
        # another port must not publish a new version (still_valid checks the server instead).
        return {"publish": fields(loaded.recipe.publish, exclude={"enabled", "load_timeout_s", "server_url"}),
                "model": loaded.recipe.triton_model_name}

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.publish.enabled

    def _repo(self, loaded: LoadedRecipe) -> Path | str:
        repo = loaded.recipe.publish.repository
        return repo if repo.startswith("s3://") else Path(repo).resolve()

    def still_valid(self, ctx: StageContext, result: StageResult) -> str | None:
        from pipeline.repository import open_repository

        model = ctx.loaded.recipe.triton_model_name
        v = result.summary.get("version")
        repo = open_repository(self._repo(ctx.loaded))
        bundle_id, served = (repo.bundle_id(model, v) if isinstance(v, int) else None), repo.served_versions(model)
        if bundle_id is None or bundle_id != result.summary.get("bundle_id"):
            return "the published version is no longer in the repository"
        if v not in served:
            return f"version {v} is no longer the served version (rolled back?)"
        url = ctx.recipe.publish.server_url
        if url:
            from pipeline.errors import ServiceError
            from pipeline.triton.control import ModelControl

            try:
                ready = ModelControl(url, timeout=5.0).is_ready(model, v)
            except ServiceError:
                ready = False
            if not ready:
                return f"version {v} is not ready on {url}"
        return None

    def run(self, ctx: StageContext) -> StageOutput:
        p = ctx.recipe.publish
        bundle, _ = served_bundle(ctx)  # served with its default profile (`trtbuild publish --profile` picks)
        plan = switch_plan_of(ctx.loaded)
        ctx.reporter.info(f"switch: {plan.strategy} ({plan.reason})")
        kwargs: dict[str, Any] = {
            "facts": runtime_facts(ctx.loaded), "keep": p.keep_versions, "server_url": p.server_url or None,
            "load_timeout": p.load_timeout_s, "smoke_prompt": p.smoke_prompt, "instances": p.instances}
        options = ServingOptions(instances=p.instances, kv_cache_free_gpu_mem_fraction=(
            plan.kv_cache_free_gpu_mem_fraction if ctx.recipe.build.backend != "reference" else None))
        with ctx.progress(f"publishing {ctx.recipe.triton_model_name} into Triton ({plan.strategy} switch)"):
            published = self._publish(ctx, bundle, plan, kwargs, options)
        ctx.reporter.info(f"published {published.model} version {published.version} "
                          f"(bundle {published.bundle_id[:12]}) into {published.repository}")
        with ctx.progress("recording the deployment in MLflow"):
            self._record_deployment(ctx, f"{published.repository}/{published.model}@v{published.version}")
        return StageOutput(outputs={"repository": published.repository}, summary=published.to_json())

    def _publish(self, ctx: StageContext, bundle: Path, plan: Any, kwargs: dict[str, Any],
                 options: ServingOptions) -> Any:
        from pipeline.errors import ServiceError, StageError
        from pipeline.repository.publish import DRAIN_NEEDS_ONE_SERVER, publish_bundle

        try:
            # the store lets a later rollback bring back a version pruned from the repository
            return publish_bundle(bundle, self._repo(ctx.loaded), ctx.recipe.triton_model_name, **kwargs,
                                  store=ctx.recipe.release.store if ctx.recipe.release.enabled else None,
                                  options=options, switch=plan.strategy)
        except ServiceError as e:
            if str(e) == DRAIN_NEEDS_ONE_SERVER:
                raise StageError("publish", "switch 'drain' needs a directory repository with one server; an "
                                 "s3:// repository is served by replicas: set publish.switch to rolling") from None
            raise

    @staticmethod
    def _record_deployment(ctx: StageContext, where: str) -> None:
        """Tag the released registry version with where it now serves (`trtbuild list` shows it)."""
        from pipeline.errors import RegistryError
        from pipeline.registry.mlflow_registry import open_registry

        release = ctx.inputs.get("release")
        if release is None or not isinstance(release.summary.get("version"), int):
            return  # release disabled: nothing registered to tag
        version = int(release.summary["version"])
        try:
            open_registry(ctx.recipe.release.registry).mark_deployed(release.summary["model"], version, where)
        except RegistryError as e:
            # the model is published and serving; a tag is bookkeeping, not a reason to fail
            ctx.reporter.info(f"[yellow]warning:[/] could not record the deployment in MLflow: {e.one_line()}")
