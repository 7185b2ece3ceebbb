"""check: does a bundle verify, and can it run on a runtime?"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from pipeline.cli import common
from pipeline.cli.output import Output


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--target", help="Runtime GPU (h100, b200, cpu, ...). Default: detect this host.")
@click.option("--gpus", type=int, help="GPUs the runtime has (default: detected, or 8 for a named GPU).")
@click.option("--tp", "tensor_parallel", type=int, help="Tensor parallel size the deployment asks for.")
@click.option("--pp", "pipeline_parallel", type=int, help="Pipeline parallel size the deployment asks for.")
@click.option("--tensorrt", help="TensorRT version of the runtime.")
@click.option("--tensorrt-llm", "tensorrt_llm", help="TensorRT-LLM version of the runtime.")
@click.option("--image", help="Serving image (nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3): its TensorRT and "
                              "TensorRT-LLM versions from the upstream records (tests/data/upstream/containers.json).")
@common
def check(bundle: Path, target: str | None, gpus: int | None, tensor_parallel: int | None,
          pipeline_parallel: int | None, tensorrt: str | None, tensorrt_llm: str | None, image: str | None,
          json_mode: bool) -> None:
    """Verify a bundle (every file's sha256) and check it fits a runtime."""
    from pipeline.bundle import (
        RuntimeFacts,
        compatibility_problems,
        detect_runtime,
        facts_for_target,
        load_bundle,
    )
    from pipeline.errors import CompatibilityError

    out = Output(json_mode=json_mode)
    if image is not None:
        from pipeline import upstream
        from pipeline.errors import UsageError

        known = upstream.image_versions(image)
        if known is None:
            raise UsageError(f"--image {image}: not in the upstream records (tests/data/upstream/containers.json); "
                             "give the runtime's versions with --tensorrt and --tensorrt-llm")
        tensorrt = tensorrt or known["tensorrt"]
        tensorrt_llm = tensorrt_llm or known["tensorrt_llm"]
    b = load_bundle(bundle)
    facts: RuntimeFacts | None
    if target is not None:
        facts = facts_for_target(target, gpus=gpus, tensorrt=tensorrt, tensorrt_llm=tensorrt_llm,
                                 tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel)
    else:
        facts = detect_runtime() or facts_for_target("cpu")
        # versions said on the command line are the runtime's, detected or not
        facts = replace(facts, tensorrt=tensorrt or facts.tensorrt, tensorrt_llm=tensorrt_llm or facts.tensorrt_llm,
                        tensor_parallel=tensor_parallel or facts.tensor_parallel,
                        pipeline_parallel=pipeline_parallel or facts.pipeline_parallel, gpus=gpus or facts.gpus)
    problems = compatibility_problems(b.compatibility, facts)
    out.result({"bundle": str(bundle), "bundle_id": b.id, "verified": True, "runtime": facts.__dict__,
                "compatible": not problems, "problems": problems})
    out.human(f"bundle {b.short_id} ({b.backend}) verified: {len(b.manifest['files'])} files")
    if problems:
        raise CompatibilityError(f"bundle {b.short_id} cannot run on {facts.gpu}: " + "; ".join(problems))
    out.human(f"[green]compatible[/] with {facts.gpu} ({facts.source})")


def register(group: click.Group) -> None:
    group.add_command(check)
