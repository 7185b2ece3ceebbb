"""Serving the candidate under load: one launch path for the throughput gate and the tune stage.

A reference bundle is published into a private tritonserver's repository (rendered exactly as
`publish` renders it, with the serving profile or a tune point's settings); a tensorrt or pytorch
bundle runs under trtllm-serve with the settings as its flags and LLM API options.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.runner.stage import StageContext


@dataclass
class TritonCandidates:
    """A private tritonserver on which candidate models are loaded and unloaded."""

    server: Any
    repo: Path

    @contextlib.contextmanager
    def model(self, bundle: Path, name: str, *, profile: str | None = None,
              settings: dict[str, Any] | None = None) -> Iterator[Any]:
        """`bundle` loaded as model `name` with `profile` (None: the bundle's default) or explicit
        `settings`; unloaded and removed from the repository afterwards."""
        from pipeline.bench.client import TritonEndpoint
        from pipeline.bundle import facts_for_target
        from pipeline.repository.publish import publish_bundle
        from pipeline.repository.render import ServingOptions
        from pipeline.triton.control import ModelControl

        options = ServingOptions(instances=int((settings or {}).get("instances", 1)), profile=profile,
                                 settings=tuple(sorted((settings or {}).items())))
        try:
            publish_bundle(bundle, self.repo, name, facts=facts_for_target("cpu"), server_url=self.server.http_url,
                           options=options)
            yield TritonEndpoint(self.server.http_url, name, name="candidate")
        finally:
            with contextlib.suppress(Exception):
                ModelControl(self.server.http_url).unload(name)
                ModelControl(self.server.http_url).wait_unloaded(name, timeout=60)
            shutil.rmtree(self.repo / name, ignore_errors=True)


@contextlib.contextmanager
def triton_candidates(ctx: StageContext, *, log_name: str = "candidate-triton.log") -> Iterator[TritonCandidates]:
    from pipeline.triton.server import TritonServer, locate_tritonserver

    repo = ctx.workdir / ".candidate-repo"
    repo.mkdir()
    try:
        server = TritonServer(locate_tritonserver(None), log_path=ctx.workdir / log_name)
        with ctx.progress("starting tritonserver for the candidate"):
            started = server.start(repo)
        with started:
            yield TritonCandidates(server, repo)
    finally:
        shutil.rmtree(repo, ignore_errors=True)


@contextlib.contextmanager
def trtllm_candidate(ctx: StageContext, bundle: Path, source: Path, *, profile: str | None = None,
                     settings: dict[str, Any] | None = None, log_name: str = "candidate-trtllm-serve.log"
                     ) -> Iterator[Any]:
    """trtllm-serve for a tensorrt or pytorch bundle, with the profile's (or explicit) settings."""
    from pipeline.backends.trtllm_serve import TrtllmServe
    from pipeline.bench.client import OpenAIEndpoint
    from pipeline.bundle import load_bundle
    from pipeline.tune.profiles import serving_settings

    c = ctx.recipe.gates.throughput.candidate
    server = TrtllmServe.for_model(c, ctx.recipe, model=bundle, tokenizer=source, log=ctx.workdir / log_name)
    _, s = serving_settings(load_bundle(bundle, verify=False), profile, settings)
    server = with_settings(server, s, ctx.workdir / f".{log_name}.llm_api_options.yaml")
    with ctx.progress("starting trtllm-serve for the candidate"):
        server.start()
    try:
        yield OpenAIEndpoint(server.url, server.served_name, name="candidate")
    finally:
        server.stop()


def with_settings(server: Any, s: dict[str, Any], options_path: Path) -> Any:
    """A TrtllmServe with runtime settings: the limits as flags, the rest as LLM API options merged
    over the bundle's own options file (trtllm-serve takes one --extra_llm_api_options)."""
    flags = {k: s[k] for k in ("max_batch_size", "max_num_tokens", "kv_cache_free_gpu_memory_fraction") if k in s}
    extra: dict[str, Any] = {}
    if "enable_chunked_context" in s:
        extra["enable_chunked_prefill"] = bool(s["enable_chunked_context"])
    if "batch_scheduler_policy" in s:
        extra["scheduler_config"] = {"capacity_scheduler_policy": str(s["batch_scheduler_policy"]).upper()}
    server = replace(server, **flags)
    if not extra:
        return server
    base = yaml.safe_load(server.options.read_text()) if server.options is not None else {}
    merged = {**(base or {}), **extra}
    options_path.write_text(yaml.safe_dump(merged, sort_keys=True))
    return replace(server, options=options_path)
