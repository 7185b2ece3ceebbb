"""quantize: NVIDIA ModelOpt calibration and the exports the chosen backend needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage, StageContext, StageOutput
from pipeline.stages.common import fields

# which checkpoint formats each backend consumes
EXPORTS = {"tensorrt": {"trtllm"}, "pytorch": {"unified"}, "reference": {"unified"}}


def exports_for(loaded: LoadedRecipe) -> set[str]:
    """What the backend consumes, plus the unified checkpoint when a vLLM baseline serves the
    quantized model (`gates.throughput.baseline.checkpoint: quantized`): vLLM reads ModelOpt's
    unified HF export, never a TensorRT-LLM checkpoint."""
    r = loaded.recipe
    out = set(EXPORTS[r.build.backend])
    base = r.gates.throughput.baseline
    if r.gates.throughput.enabled and base.kind == "vllm" and base.checkpoint == "quantized":
        out.add("unified")
    return out


class QuantizeStage(Stage):
    name = "quantize"
    inputs = ("fetch",)
    tools: ClassVar[tuple[str, ...]] = ("nvidia-modelopt", "torch", "transformers")
    # 2: modelopt_state.pth holds only what calibration added or changed (pipeline/quant/state.py),
    # not mto.save's full state dict; an output cached by 1 has the other format
    # 3: exports carry transformers-4 RoPE fields (unified rope_theta/rope_scaling), ModelOpt's own
    # decoder_type and qwen_type; the TensorRT-LLM export of an offloaded calibration runs on the CPU
    code_version = 3

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        r = loaded.recipe
        q = fields(r.quantize)
        if r.quantize.algo == "none" and r.quantize.kv_cache == "none":
            q.pop("calibration")  # nothing is calibrated: calibration settings cannot matter
        return {"quantize": q, "exports": sorted(exports_for(loaded)), "dtype": r.source.dtype,
                "tensor_parallel": r.target.tensor_parallel,
                "pipeline_parallel": r.target.pipeline_parallel}

    def run(self, ctx: StageContext) -> StageOutput:
        from pipeline.quant.calibration import load_calibration
        from pipeline.quant.quantize import quantize_checkpoint

        r = ctx.recipe
        src = Path(ctx.inputs["fetch"].outputs["checkpoint"])
        calib = None
        if r.quantize.algo != "none" or r.quantize.kv_cache != "none":
            from transformers import AutoTokenizer

            c = r.quantize.calibration
            tok = AutoTokenizer.from_pretrained(src)
            calib = load_calibration(c.dataset, tok, samples=c.samples, seq_len=c.seq_len, seed=c.seed)
        exports = exports_for(ctx.loaded)
        with ctx.progress("calibrating", total=r.quantize.calibration.samples) as bar:
            record = quantize_checkpoint(
                src, ctx.workdir / "out", algo=r.quantize.algo, kv_cache=r.quantize.kv_cache,
                calibration=calib, exports=exports, tensor_parallel=r.target.tensor_parallel,
                pipeline_parallel=r.target.pipeline_parallel, dtype=r.source.dtype,
                # after the last sample: the exports (and, offloaded, a full reload on the CPU)
                progress=lambda i, n: bar.update(completed=i, total=n,
                                                 description="calibrated; exporting" if i >= n else None),
            )
        outputs = {e: f"out/{e}" for e in exports}
        outputs["record"] = "out/quantize.json"
        return StageOutput(outputs=outputs, summary=record)
