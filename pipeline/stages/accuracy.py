"""accuracy: the candidate against the unquantized source, with stated statistics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import NotImplementedStageError
from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage, StageContext, StageOutput
from pipeline.stages.common import fields
from pipeline.util import atomic


class AccuracyStage(Stage):
    name = "accuracy"
    inputs = ("fetch", "build")
    code_version = 1

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return fields(loaded.recipe.gates.accuracy, exclude={"enabled"})

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.gates.accuracy.enabled

    def run(self, ctx: StageContext) -> StageOutput:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipeline.backends.reference.runtime import ReferenceRuntime, SamplingParams
        from pipeline.backends.reference.serve import load_runtime
        from pipeline.eval import gate, tasks, teacher_forced, textset

        r = ctx.recipe
        cfg = r.gates.accuracy
        if r.build.backend != "reference":
            raise NotImplementedStageError("accuracy", f"candidate logprobs for backend '{r.build.backend}' come "
                                           "from TensorRT-LLM's LLM API on a GPU host; not wired yet")
        source = Path(ctx.inputs["fetch"].outputs["checkpoint"])
        bundle = Path(ctx.inputs["build"].outputs["bundle"])
        tok = AutoTokenizer.from_pretrained(source)
        base_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        baseline = ReferenceRuntime(base_model, tok, max_batch_size=r.build.max_batch_size,
                                    max_seq_len=r.build.max_seq_len).start()
        candidate = load_runtime(bundle, verify=False, activations=True)  # the build stage verified it
        try:
            seqs = textset.windows(tok, textset.load_text(cfg.text_set, ctx.loaded.path.parent),
                                   count=cfg.text_samples, length=cfg.text_seq_len)
            with ctx.progress("teacher-forced comparison", total=len(seqs)) as bar:
                tf = teacher_forced.compare(baseline.score, candidate.score, seqs, progress=bar.advance)
            pairs = []
            for t in cfg.tasks:
                items = tasks.load_items(t.data, ctx.loaded.path.parent)
                with ctx.progress(f"task {t.name}", total=2):
                    b = tasks.run_task(t.name, t.kind, items, _greedy(baseline, SamplingParams), limit=t.limit)
                    c = tasks.run_task(t.name, t.kind, items, _greedy(candidate, SamplingParams), limit=t.limit)
                pairs.append((b, c))
        finally:
            baseline.stop()
            candidate.stop()
        refs_path = Path(cfg.references)
        key = gate.reference_key(r.release.model_name, r.quantize.algo, r.quantize.kv_cache)
        report = gate.decide(cfg, tf, pairs, gate.load_references(refs_path), key)
        atomic.write_text(ctx.workdir / "accuracy.json", json.dumps(report.to_json(), indent=2, sort_keys=True))
        atomic.write_text(ctx.workdir / "accuracy.md", report.markdown())
        ctx.reporter.info(report.markdown())
        return StageOutput(outputs={"report": "accuracy.json", "markdown": "accuracy.md"},
                           summary={"failed": report.failed, "metrics": {
                               "ppl_ratio": tf.ppl_ratio, "top1_agreement": tf.top1_agreement, "mean_kl": tf.mean_kl,
                               **{f"{t['name']}_accuracy": t["candidate"] for t in report.tasks}}},
                           passed=report.passed)


def _greedy(rt: Any, params_cls: Any) -> Callable[[str, int], str]:
    def gen(prompt: str, n: int) -> str:
        return str(rt.generate(prompt, params_cls(max_tokens=n)).text)

    return gen


