"""accuracy: the candidate against the unquantized source, with stated statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import NotImplementedStageError
from pipeline.eval import lmeval_sides, references
from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage, StageContext, StageOutput, StageResult
from pipeline.stages.common import fields
from pipeline.util import atomic

# teacher-forced windows per forward: all windows have one length, so rows need no padding and
# score exactly as alone; 4 keeps the [4, len, vocab] log-prob tensors of both models near 1 GB
# for a 49k vocabulary at 256 tokens
TF_BATCH = 4


class AccuracyStage(Stage):
    name = "accuracy"
    inputs = ("fetch", "build")
    code_version = 2

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return fields(loaded.recipe.gates.accuracy, exclude={"enabled"})

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.gates.accuracy.enabled

    def external_digests(self, loaded: LoadedRecipe, artifacts: Path) -> dict[str, str]:
        # the verdict depends on this recipe's reference entry: a recorded or edited one re-runs the gate
        r = loaded.recipe
        key = references.reference_key(r.release.model_name, r.quantize.algo, r.quantize.kv_cache)
        digests = {"references": references.entry_digest(Path(r.gates.accuracy.references), key)}
        if any(t.kind == "lm-eval" for t in r.gates.accuracy.tasks):
            # an edited task YAML or data file changes what is measured: the gate runs again
            digests["lm_eval_tasks"] = lmeval_sides.task_files_digest(loaded)
        return digests

    def still_valid(self, ctx: StageContext, result: StageResult) -> str | None:
        if ctx.options.get("record_references"):
            return "--record-references measures the baseline again"
        return None

    def run(self, ctx: StageContext) -> StageOutput:
        from pipeline.eval import gate

        r = ctx.recipe
        cfg = r.gates.accuracy
        in_process = [t for t in cfg.tasks if t.kind != "lm-eval"]
        harness = [t for t in cfg.tasks if t.kind == "lm-eval"]
        # unset: measured exactly where it can be (in-process, reference backend)
        teacher = cfg.teacher_forced if cfg.teacher_forced is not None else r.build.backend == "reference"
        if (teacher or in_process) and r.build.backend != "reference":
            # also a recipe rule; kept for recipes built in code
            raise NotImplementedStageError("accuracy", f"teacher-forced metrics and builtin tasks run in-process on "
                                           f"the reference backend, not '{r.build.backend}'; set teacher_forced: "
                                           "false and use lm-eval tasks")
        tf, pairs = self._in_process(ctx, in_process, teacher) if (teacher or in_process) else (None, [])
        if harness:
            pairs += lmeval_sides.measure(ctx, harness)
        refs_path = Path(cfg.references)
        key = references.reference_key(r.release.model_name, r.quantize.algo, r.quantize.kv_cache)
        # judged against the file as it is now; values recorded below apply from the next run on
        report = gate.decide(cfg, tf, pairs, references.load(refs_path), key)
        if not teacher:
            why = ("gates.accuracy.teacher_forced is false" if cfg.teacher_forced is False else
                   f"they run in-process on the reference backend, this build is {r.build.backend}")
            report.notes.append(f"teacher-forced metrics (perplexity ratio, top-1 agreement, KL) not measured: {why}")
        if ctx.options.get("record_references"):
            _record(ctx, refs_path, key, pairs, report)
        atomic.write_text(ctx.workdir / "accuracy.json", json.dumps(report.to_json(), indent=2, sort_keys=True))
        atomic.write_text(ctx.workdir / "accuracy.md", report.markdown())
        ctx.reporter.info(report.markdown())
        metrics: dict[str, Any] = {} if tf is None else {
            "ppl_ratio": tf.ppl_ratio, "top1_agreement": tf.top1_agreement, "mean_kl": tf.mean_kl}
        metrics |= {f"{t['name']}_accuracy": t["candidate"] for t in report.tasks}
        return StageOutput(outputs={"report": "accuracy.json", "markdown": "accuracy.md"},
                           summary={"failed": report.failed, "metrics": metrics}, passed=report.passed)

    def _in_process(self, ctx: StageContext, task_cfgs: list[Any], teacher: bool) -> tuple[Any, list[Any]]:
        """Teacher-forced metrics and the builtin tasks, both models loaded here (reference backend)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipeline.backends.reference.runtime import ReferenceRuntime
        from pipeline.backends.reference.serve import load_runtime
        from pipeline.eval import measure, tasks, textset
        from pipeline.eval.baseline_cache import BaselineCache

        r = ctx.recipe
        cfg = r.gates.accuracy
        source = Path(ctx.inputs["fetch"].outputs["checkpoint"])
        bundle = Path(ctx.inputs["build"].outputs["bundle"])
        with ctx.progress("loading the baseline and candidate models"):
            tok = AutoTokenizer.from_pretrained(source)
            base_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
            baseline = ReferenceRuntime(base_model, tok, max_batch_size=r.build.max_batch_size,
                                        max_seq_len=r.build.max_seq_len).start()
            try:
                candidate = load_runtime(bundle, verify=False, activations=True)  # the build stage verified it
            except BaseException:
                baseline.stop()
                raise
        try:
            seqs = (textset.windows(tok, textset.load_text(cfg.text_set, ctx.loaded.path.parent),
                                    count=cfg.text_samples, length=cfg.text_seq_len) if teacher else [])
            specs = [measure.TaskSpec(t.name, t.kind, tasks.load_items(t.data, ctx.loaded.path.parent), t.limit)
                     for t in task_cfgs]
            # the unquantized side depends only on the source and the items: kept across runs
            cache = BaselineCache(ctx.artifacts / "cache" / "accuracy-baseline", ctx.inputs["fetch"].digest)
            m = measure.measure(baseline, candidate, seqs, specs, tf_batch=TF_BATCH, cache=cache,
                                progress=lambda desc, total: ctx.progress(desc, total=total))
        finally:
            baseline.stop()
            candidate.stop()
        ctx.reporter.info("accuracy timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in m.seconds.items())
                          + (f"; baseline from cache: {', '.join(m.cached)}" if m.cached else ""))
        return (m.teacher_forced if teacher else None), m.tasks


def _record(ctx: StageContext, path: Path, key: str, pairs: list[Any], report: Any) -> None:
    """Write the baseline's task scores as the references for `key`, and say what changed."""
    import datetime

    from pipeline.stages.build import git_commit

    sigma = ctx.recipe.gates.accuracy.sigma
    scores = {b.name: {"accuracy": b.accuracy, "n": b.n, "sigma": sigma} for b, _c in pairs}
    lines = references.record(path, key, scores, date=datetime.datetime.now(datetime.UTC).date().isoformat(),
                              commit=git_commit(ctx.loaded.path.parent))
    for line in lines:
        ctx.reporter.info(f"references {path}: {line}")
    report.notes.append(f"recorded baseline scores as references for {key} in {path} ({'; '.join(lines)}); "
                        "this run was judged against the file as it was before, the new values apply from the "
                        "next run")
