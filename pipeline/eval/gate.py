"""The accuracy gate's decision and report: every check names its value, threshold and test."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.eval import references
from pipeline.eval.references import reference_key  # noqa: F401 - the gate's public name
from pipeline.eval.stats import mcnemar_exact, minimum_detectable_effect, paired_bootstrap, trtllm_threshold
from pipeline.eval.tasks import TaskResult
from pipeline.eval.teacher_forced import TeacherForced
from pipeline.recipe.schema import AccuracyGate


@dataclass
class Check:
    name: str
    value: float
    threshold: float
    op: str  # "<=" or ">="
    passed: bool
    detail: str = ""

    def line(self) -> str:
        tail = f" {self.detail}" if self.detail else ""
        return f"{self.name} = {self.value:.4g} (must be {self.op} {self.threshold:.4g}){tail}"


@dataclass
class AccuracyReport:
    checks: list[Check] = field(default_factory=list)
    teacher_forced: dict[str, Any] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.line() for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "checks": [asdict(c) for c in self.checks],
                "teacher_forced": self.teacher_forced, "tasks": self.tasks, "notes": self.notes}

    def markdown(self) -> str:
        rows = ["| check | value | threshold | verdict | detail |", "| --- | --- | --- | --- | --- |"]
        for c in self.checks:
            rows.append(f"| {c.name} | {c.value:.4g} | {c.op} {c.threshold:.4g} | "
                        f"{'PASS' if c.passed else '**FAIL**'} | {c.detail} |")
        return "\n".join(["## Accuracy gate: " + ("PASS" if self.passed else "FAIL"), "", *rows, "",
                          *[f"- {n}" for n in self.notes], ""])


def load_references(path: Path) -> dict[str, Any]:
    return references.load(path)


def decide(cfg: AccuracyGate, tf: TeacherForced | None, tasks: list[tuple[TaskResult, TaskResult]],
           refs: dict[str, Any] | None = None, ref_key: str = "") -> AccuracyReport:
    rep = AccuracyReport()
    if tf is not None:
        boot = paired_bootstrap(tf.nll_diff_per_seq, tolerance=math.log(cfg.max_ppl_ratio), alpha=cfg.alpha)
        rep.checks.append(Check(
            "perplexity ratio", tf.ppl_ratio, cfg.max_ppl_ratio, "<=", tf.ppl_ratio <= cfg.max_ppl_ratio,
            f"baseline {tf.ppl_baseline:.3f}, candidate {tf.ppl_candidate:.3f}; paired bootstrap "
            f"{1 - 2 * cfg.alpha:.0%} CI of the ratio [{math.exp(boot.low):.4f}, {math.exp(boot.high):.4f}]"))
        rep.checks.append(Check("top-1 agreement", tf.top1_agreement, cfg.min_top1_agreement, ">=",
                                tf.top1_agreement >= cfg.min_top1_agreement, f"{tf.tokens} tokens"))
        rep.checks.append(Check("mean KL (nats/token)", tf.mean_kl, cfg.max_kl, "<=", tf.mean_kl <= cfg.max_kl))
        rep.teacher_forced = {k: v for k, v in asdict(tf).items() if k != "nll_diff_per_seq"} | {
            "ppl_ratio": tf.ppl_ratio, "bootstrap": asdict(boot)}
    for base, cand in tasks:
        m = mcnemar_exact(base.correct, cand.correct)
        drop = base.accuracy - cand.accuracy
        significant = m.p_worse < cfg.alpha
        mde = minimum_detectable_effect(n=cand.n, sigma=cfg.sigma, alpha=cfg.alpha, beta=cfg.beta)
        rep.checks.append(Check(
            f"{cand.name} accuracy drop (points)", drop, cfg.max_accuracy_drop, "<=",
            not (drop > cfg.max_accuracy_drop and significant),
            f"baseline {base.accuracy:.1f}, candidate {cand.accuracy:.1f}, n={cand.n}; McNemar exact "
            f"p(worse)={m.p_worse:.3g} ({m.baseline_only} lost, {m.candidate_only} gained); fails only if "
            f"the drop exceeds the tolerance and p < {cfg.alpha}"))
        rep.tasks.append({"name": cand.name, "kind": cand.kind, "n": cand.n, "baseline": base.accuracy,
                          "candidate": cand.accuracy, "mcnemar": asdict(m), "mde_points": mde})
        rep.notes.append(f"{cand.name}: with n={cand.n} the unpaired test detects a drop of {mde:.1f} points "
                         f"(alpha {cfg.alpha}, power {1 - cfg.beta:.0%}); the paired test is more sensitive")
        ref = (refs or {}).get(ref_key, {}).get(cand.name)
        if ref is not None:
            sigma = float(ref.get("sigma", cfg.sigma))
            thr = trtllm_threshold(float(ref["accuracy"]), n=cand.n, sigma=sigma, alpha=cfg.alpha)
            rep.checks.append(Check(f"{cand.name} vs reference", cand.accuracy, thr, ">=", cand.accuracy >= thr,
                                    f"reference {ref['accuracy']} for {ref_key} (sigma {sigma:g}); TensorRT-LLM "
                                    "rule"))
    if refs is not None and ref_key and ref_key not in refs:
        rep.notes.append(f"no reference scores for {ref_key}; record them with `trtbuild run --record-references`")
    return rep
