"""publish: the bundle as the next version of a Triton model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import NotImplementedStageError
from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage, StageContext, StageOutput, StageResult
from pipeline.stages.common import fields


def runtime_facts(loaded: LoadedRecipe) -> Any:
    """What this host offers: the detected GPU, or the CPU for the reference backend."""
    from pipeline.bundle import detect_runtime, facts_for_target

    return detect_runtime() or facts_for_target("cpu")


class PublishStage(Stage):
    name = "publish"
    inputs = ("build", "release")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {"publish": fields(loaded.recipe.publish, exclude={"enabled", "load_timeout_s"}),
                "model": loaded.recipe.triton_model_name}

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.publish.enabled

    def _repo(self, loaded: LoadedRecipe) -> Path:
        repo = loaded.recipe.publish.repository
        if repo.startswith("s3://"):
            raise NotImplementedStageError("publish", "publishing into an s3:// model repository is not wired yet; "
                                           "use a local path")
        return Path(repo).resolve()

    def still_valid(self, ctx: StageContext, result: StageResult) -> str | None:
        from pipeline.triton.repository import ModelDir

        md = ModelDir(self._repo(ctx.loaded) / ctx.loaded.recipe.triton_model_name)
        v = result.summary.get("version")
        if not isinstance(v, int) or md.bundle_id(v) != result.summary.get("bundle_id"):
            return "the published version is no longer in the repository"
        if v not in md.served_versions():
            return f"version {v} is no longer the served version (rolled back?)"
        return None

    def run(self, ctx: StageContext) -> StageOutput:
        from pipeline.triton.publish import publish_bundle

        p = ctx.recipe.publish
        published = publish_bundle(
            Path(ctx.inputs["build"].outputs["bundle"]), self._repo(ctx.loaded), ctx.recipe.triton_model_name,
            facts=runtime_facts(ctx.loaded), keep=p.keep_versions, server_url=p.server_url or None,
            load_timeout=p.load_timeout_s, smoke_prompt=p.smoke_prompt, instances=p.instances,
            store=ctx.recipe.release.store if ctx.recipe.release.enabled else None)
        ctx.reporter.info(f"published {published.model} version {published.version} "
                          f"(bundle {published.bundle_id[:12]}) into {published.repository}")
        return StageOutput(outputs={"repository": published.repository}, summary=published.to_json())
