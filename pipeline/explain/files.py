"""What publish and build would write, rendered from the bundle the build would produce.

A stand-in bundle holds only the manifest (and, for pytorch, the LLM API options file) with the
runtime section the build stage writes; the Triton repository is then written by publish's own
code (DirectoryRepository.materialize, install_config) into DIR/triton_repo, and every config is checked
against the upstream records.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.gpu.schedule import SwitchPlan
from pipeline.recipe.load import LoadedRecipe
from pipeline.util import atomic

EXPLAIN_TRTLLM_VERSION = "1.2.0"  # the line the tensorrt backend builds with (trtllm_facts.TRTLLM_LINE)


@dataclass
class RenderedFiles:
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def engine_config(loaded: LoadedRecipe) -> dict[str, Any]:
    """What read_engine_config would report for the engine this recipe builds."""
    from pipeline.backends import trtllm_facts as facts
    from pipeline.backends.tensorrt import use_fp8_context_fmha
    from pipeline.gpu.sizing import source_config

    r = loaded.recipe
    b, t = r.build, r.build.tensorrt
    cfg, _ = source_config(r, loaded.path.parent)
    world = r.target.world_size
    return {
        "trtllm_version": EXPLAIN_TRTLLM_VERSION, "architecture": ((cfg or {}).get("architectures") or [None])[0],
        "dtype": r.source.dtype, "quant_algo": facts.QUANT_ALGO[r.quantize.algo],
        "kv_cache_quant_algo": facts.KV_CACHE_QUANT_ALGO[r.quantize.kv_cache],
        "tp_size": r.target.tensor_parallel, "pp_size": r.target.pipeline_parallel, "world_size": world,
        "max_batch_size": b.max_batch_size, "max_input_len": b.max_input_len or b.max_seq_len,
        "max_seq_len": b.max_seq_len, "max_num_tokens": b.max_num_tokens, "max_beam_width": t.max_beam_width,
        "kv_cache_type": "PAGED",
        "plugins": {"use_paged_context_fmha": t.use_paged_context_fmha, "use_fp8_context_fmha": use_fp8_context_fmha(r),
                    "multiple_profiles": t.multiple_profiles, "tokens_per_block": t.tokens_per_block,
                    "gemm_plugin": t.gemm_plugin},
        "engines": [facts.engine_file(i) for i in range(world)],
    }


def _standin_bundle(loaded: LoadedRecipe, where: Path) -> Path:
    from pipeline.bundle import write_manifest

    r = loaded.recipe
    bundle = where / "bundle"
    bundle.mkdir()
    if r.build.backend == "tensorrt":
        runtime: dict[str, Any] = {"kind": "tensorrt", "engine": "engine", "tokenizer": "tokenizer",
                                   "engine_config": engine_config(loaded)}
    elif r.build.backend == "pytorch":
        from pipeline.backends.pytorch import llm_api_options, write_options

        write_options(bundle / "llm_api_options.yaml", llm_api_options(r))
        runtime = {"kind": "pytorch", "checkpoint": "checkpoint", "options": "llm_api_options.yaml"}
    else:
        b = r.build
        runtime = {"kind": "reference", "checkpoint": "checkpoint", "dtype": b.reference.dtype,
                   "max_batch_size": b.max_batch_size, "max_seq_len": b.max_seq_len,
                   "max_num_tokens": b.max_num_tokens}
    compat = {"backend": r.build.backend, "gpu": r.target.gpu, "tensor_parallel": r.target.tensor_parallel,
              "pipeline_parallel": r.target.pipeline_parallel}
    write_manifest(bundle, name=r.name, backend=r.build.backend, provenance={"explain": True},
                   compatibility=compat, runtime=runtime)
    return bundle


def render(loaded: LoadedRecipe, out_dir: Path, switch: SwitchPlan) -> RenderedFiles:
    """Write DIR/triton_repo (and DIR/llm_api_options.yaml for pytorch bundles); check every config."""
    from pipeline import upstream
    from pipeline.bundle import load_bundle
    from pipeline.repository.local import DirectoryRepository
    from pipeline.repository.render import ServingOptions, render_version

    r = loaded.recipe
    res = RenderedFiles()
    model = r.triton_model_name
    repo = out_dir / "triton_repo"
    repo.mkdir(parents=True, exist_ok=True)
    pub = r.publish.repository
    served_root = pub if pub.startswith("s3://") else str(Path(pub).resolve())
    options = ServingOptions(instances=r.publish.instances, kv_cache_free_gpu_mem_fraction=(
        switch.kv_cache_free_gpu_mem_fraction if r.build.backend != "reference" else None))
    with tempfile.TemporaryDirectory(prefix="trtbuild-explain-") as tmp:
        bundle = load_bundle(_standin_bundle(loaded, Path(tmp)))
        rendered = render_version(model, bundle, 1, version_dir=f"{served_root}/{model}/1", options=options)
        for m in rendered.all():
            res.problems += [f"triton_repo/{m.name}/config.pbtxt: {p}"
                             for p in upstream.check_triton_config(m.role, m.config)]
        target = DirectoryRepository(repo)
        target.materialize(model, bundle, 1, server_repository=served_root, options=options)
        target.install_config(model, 1)
        if r.build.backend == "pytorch":
            from pipeline.backends.pytorch import llm_api_options

            opts = llm_api_options(r)
            res.problems += [f"llm_api_options.yaml: {p}" for p in upstream.check_llm_api_options(opts)]
            import yaml

            atomic.write_text(out_dir / "llm_api_options.yaml", yaml.safe_dump(opts, sort_keys=False))
            res.files.append("llm_api_options.yaml")
            for m in rendered.all():
                if "model.yaml" in m.files:
                    data = yaml.safe_load(m.files["model.yaml"])
                    data.pop("triton_config", None)
                    data.pop("model", None)
                    res.problems += [f"triton_repo/{m.name}/1/model.yaml: {p}"
                                     for p in upstream.check_llm_api_options(data)]
    # version 1's bundle/ holds only the stand-in manifest: publish links the real bundle there
    res.files += sorted(str(p.relative_to(out_dir)) for p in repo.rglob("*") if p.is_file())
    return res
