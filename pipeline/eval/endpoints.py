"""The two OpenAI completions endpoints lm-eval runs against, started for the gate or given.

candidate: the built bundle. The reference backend's bundle is served by trtbuild's reference
OpenAI server (the CPU analog of trtllm-serve); a tensorrt or pytorch bundle by trtllm-serve.
baseline: the unquantized source, by the reference server on the CPU and by vLLM elsewhere.
Either side may instead be an existing endpoint (`kind: endpoint`, url + model).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pipeline.eval.lmeval import Endpoint
from pipeline.recipe.load import interpolate_string
from pipeline.recipe.schema import LmEvalServer, Recipe

Side = Literal["candidate", "baseline"]


def vllm_gpu_args(recipe: Recipe, recipe_dir: Path, checkpoint: Path | None, *, quantized: bool) -> list[str]:
    """vLLM's explicit TP and memory share for the source (or the quantized export) on this recipe's GPUs."""
    from pipeline.gpu.schedule import vllm_gpu
    from pipeline.gpu.sizing import recipe_size

    if recipe.target.gpu == "cpu":
        return []
    size, _ = recipe_size(recipe, recipe_dir, quantized=quantized, checkpoint=checkpoint)
    return vllm_gpu(recipe, size).args()


def resolved_kind(side: Side, srv: LmEvalServer, backend: str) -> str:
    if srv.kind != "auto":
        return srv.kind
    if backend == "reference":
        return "reference"
    return "trtllm-serve" if side == "candidate" else "vllm"


@contextlib.contextmanager
def serve(side: Side, srv: LmEvalServer, recipe: Recipe, *, source: Path, bundle: Path,
          workdir: Path, recipe_dir: Path = Path()) -> Iterator[Endpoint]:
    """Start (or name) the endpoint of one side; stopped on exit. Prompts are tokenized with the source's
    tokenizer on both sides, so token ids are identical."""
    kind = resolved_kind(side, srv, recipe.build.backend)
    log = workdir / f"lm-eval-{side}-server.log"
    if kind == "endpoint":
        assert srv.url and srv.model  # noqa: S101 - a recipe rule guarantees both
        yield Endpoint(interpolate_string(srv.url), srv.model, source)
        return
    if kind == "reference":
        from pipeline.backends.reference.openai_launch import ReferenceOpenAIServer

        # the candidate with fake-quantized activations, as the in-process gate measures it
        b = recipe.build
        server = ReferenceOpenAIServer(sys.executable, bundle=bundle if side == "candidate" else None,
                                       checkpoint=None if side == "candidate" else source,
                                       activations=side == "candidate", served_name=side,
                                       max_batch_size=b.max_batch_size, max_seq_len=b.max_seq_len, log=log,
                                       start_timeout=srv.start_timeout_s)
        with server:
            yield Endpoint(server.url, side, source)
        return
    if kind == "vllm":
        from pipeline.bench.vllm_server import VllmServer

        python = interpolate_string(srv.python or recipe.gates.throughput.baseline.python)
        with VllmServer(python=python, model_dir=source, served_name=side, max_model_len=recipe.build.max_seq_len,
                        extra_args=list(srv.extra_args),
                        gpu_args=vllm_gpu_args(recipe, recipe_dir, source, quantized=False), log=log,
                        start_timeout=srv.start_timeout_s) as vllm:
            yield Endpoint(vllm.url, side, source)
        return
    from pipeline.backends.trtllm_serve import TrtllmServe

    model = bundle if side == "candidate" else source
    with TrtllmServe.for_model(srv, recipe, model=model, tokenizer=source, log=log) as trt:
        yield Endpoint(trt.url, trt.served_name, source)
