"""The accuracy gate's measurement, one at a time (as before) vs batched (as the stage runs now).

    python benchmarks/accuracy_speed.py SOURCE_CHECKPOINT BUNDLE_DIR [--samples 32] [--seq-len 256]
                                        [--tf-batch 4] [--first new] [--warm]

SOURCE_CHECKPOINT is the fetch stage's `checkpoint` directory, BUNDLE_DIR a reference bundle
(build stage). Both sides run in this process on the same windows and task prompts (the
shipped mc-facts and copy sets, as recipes/smollm2-cpu.yaml): "old" loads the candidate with
the previous FP8 emulation (one-expression fake quant per Linear) and scores one window and one
prompt per forward; "new" is pipeline.eval.measure as the stage runs it (its baseline cache
empty); with --warm, "warm" is new again with the baseline from that cache, as a re-run on the
same source. Prints wall seconds per part (model load included), the ratios, and whether every
number and answer matches.
On a shared machine run it when it is quiet: other processes slow whichever side runs then.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.backends.reference.runtime import ReferenceRuntime
from pipeline.eval import measure, tasks, textset
from pipeline.eval.baseline_cache import BaselineCache
from pipeline.quant import loader

TASKS = (("mc-facts", "multiple-choice"), ("copy", "exact-match"))


def old_emulation(model: Any, checkpoint: Path) -> None:
    """The FP8 hooks as shipped before this change: a full-size temporary per step, per Linear."""
    from safetensors.torch import load_file

    algo, kv, _ = loader.quant_info(checkpoint)
    if algo != "FP8" or kv not in (None, "FP8"):
        raise SystemExit(f"{checkpoint}: the old-path emulation here covers FP8 / FP8 KV only (got {algo}/{kv})")
    raw: dict[str, torch.Tensor] = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        raw.update(load_file(f))

    def fq(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return ((x.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)

    ins, outs = loader.activation_scales(raw), loader.kv_scales(raw)
    for name, module in model.named_modules():
        if (s := ins.get(name)) is not None:
            module.register_forward_pre_hook(lambda _m, a, s=s: (fq(a[0], s), *a[1:]))
        if (s := outs.get(name)) is not None and kv == "FP8":
            module.register_forward_hook(lambda _m, _a, out, s=s: fq(out, s))


def side(source: Path, bundle: Path, seqs: list[list[int]], specs: list[measure.TaskSpec], *, batched: bool,
         tf_batch: int, cache: BaselineCache | None = None) -> tuple[measure.Measured, float, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.bundle import load_bundle

    start, cpu = time.perf_counter(), time.process_time()
    rt_info = load_bundle(bundle, verify=False).manifest["runtime"]
    ckpt = bundle / rt_info["checkpoint"]
    tok = AutoTokenizer.from_pretrained(source)
    base = ReferenceRuntime(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval(), tok,
                            max_batch_size=int(rt_info["max_batch_size"]), max_seq_len=int(rt_info["max_seq_len"]))
    model, ctok = loader.load_unified(ckpt, activations=batched)
    if not batched:
        old_emulation(model, ckpt)
    cand = ReferenceRuntime(model, ctok, max_batch_size=int(rt_info["max_batch_size"]),
                            max_seq_len=int(rt_info["max_seq_len"]))
    load_s = time.perf_counter() - start
    try:
        m = measure.measure(base.start(), cand.start(), seqs, specs, batched=batched, tf_batch=tf_batch, cache=cache)
    finally:
        base.stop()
        cand.stop()
    m.seconds = {"load models": load_s, **m.seconds}
    return m, time.perf_counter() - start, time.process_time() - cpu


def same(a: measure.Measured, b: measure.Measured) -> list[str]:
    """Every difference between the two measurements, as lines (empty: identical)."""
    diffs = []
    ta, tb = a.teacher_forced, b.teacher_forced
    for k in ("tokens", "ppl_baseline", "ppl_candidate", "top1_agreement", "mean_kl"):
        va, vb = getattr(ta, k), getattr(tb, k)
        if va != vb:
            close = math.isclose(va, vb, rel_tol=1e-9)
            diffs.append(f"teacher-forced {k}: {va!r} vs {vb!r}{' (within 1e-9)' if close else ''}")
    if ta.nll_diff_per_seq != tb.nll_diff_per_seq:
        diffs.append("teacher-forced per-window NLL differences differ")
    for (ba, ca), (bb, cb) in zip(a.tasks, b.tasks, strict=True):
        for label, x, y in (("baseline", ba, bb), ("candidate", ca, cb)):
            if x.answers != y.answers:
                n = sum(p != q for p, q in zip(x.answers, y.answers, strict=True))
                diffs.append(f"{x.name} {label}: {n} of {x.n} answers differ")
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--tf-batch", type=int, default=4)
    ap.add_argument("--first", choices=("old", "new"), default="old", help="Which side runs first.")
    ap.add_argument("--warm", action="store_true",
                    help="Also run new again with the baseline taken from the cache the first new run filled "
                         "(what a re-run on the same source costs).")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.source)
    seqs = textset.windows(tok, textset.pydoc_text(), count=args.samples, length=args.seq_len)
    specs = [measure.TaskSpec(n, k, tasks.load_items(f"builtin:{n}")) for n, k in TASKS]
    print(f"torch threads {torch.get_num_threads()}; {len(seqs)} windows of {args.seq_len}; "
          f"tasks {', '.join(f'{s.name} ({len(s.items) - 2})' for s in specs)}", flush=True)
    runs: dict[str, tuple[measure.Measured, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = BaselineCache(Path(tmp), "benchmark")  # empty: "new" fills it, "warm" reads it
        order = [args.first, "new" if args.first == "old" else "old"] + (["warm"] if args.warm else [])
        for name in order:
            load_before = os.getloadavg()[0]
            runs[name] = side(args.source, args.bundle, seqs, specs, batched=name != "old", tf_batch=args.tf_batch,
                              cache=None if name == "old" else cache)
            print(f"{name}: {runs[name][1]:.1f}s wall, {runs[name][2]:.1f}s CPU; load average {load_before:.1f} "
                  f"before, {os.getloadavg()[0]:.1f} after; baseline from cache: {runs[name][0].cached or 'none'}",
                  flush=True)
    (old, old_s, old_cpu), (new, new_s, new_cpu) = runs["old"], runs["new"]
    warm = runs.get("warm")
    head = f"\n{'part':<22} {'old s':>8} {'new s':>8} {'old/new':>8}"
    print(head + (f" {'warm s':>8} {'old/warm':>8}" if warm else ""))
    for part in old.seconds:
        o, n = old.seconds[part], new.seconds[part]
        tail = f" {warm[0].seconds[part]:>8.1f} {o / warm[0].seconds[part]:>8.2f}" if warm else ""
        print(f"{part:<22} {o:>8.1f} {n:>8.1f} {o / n:>8.2f}{tail}")
    tail = f" {warm[1]:>8.1f} {old_s / warm[1]:>8.2f}" if warm else ""
    print(f"{'total':<22} {old_s:>8.1f} {new_s:>8.1f} {old_s / new_s:>8.2f}{tail}")
    tail = f" {warm[2]:>8.1f} {old_cpu / warm[2]:>8.2f}" if warm else ""
    print(f"{'total CPU (process)':<22} {old_cpu:>8.1f} {new_cpu:>8.1f} {old_cpu / new_cpu:>8.2f}{tail}")
    diffs = same(old, new) + ([f"warm: {d}" for d in same(old, warm[0])] if warm else [])
    tf = new.teacher_forced
    print(f"\nnew: ppl ratio {tf.ppl_ratio:.6f}, top-1 {tf.top1_agreement:.6f}, KL {tf.mean_kl:.6f}; "
          + ", ".join(f"{c.name} {b.accuracy:.1f}/{c.accuracy:.1f}" for b, c in new.tasks))
    print("equivalence: " + ("every number and answer identical" if not diffs else "; ".join(diffs)))


if __name__ == "__main__":
    main()
