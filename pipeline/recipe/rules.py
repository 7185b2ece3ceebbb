"""Cross-field rules a user would otherwise learn after an hour of GPU time.

Each rule returns (field path, message) so the loader can point at the offending line.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.recipe.hardware import GPUS, sm_label
from pipeline.recipe.schema import Recipe

Problem = tuple[tuple[str | int, ...], str]


def check(recipe: Recipe, recipe_dir: Path | None = None) -> list[Problem]:
    """`recipe_dir`: the recipe's directory, against which relative paths resolve (checked when given)."""
    problems: list[Problem] = []
    gpu = GPUS[recipe.target.gpu]
    q = recipe.quantize
    b = recipe.build

    for field, value in (("algo", q.algo), ("kv_cache", q.kv_cache)):
        if value == "nvfp4" and not gpu.nvfp4:
            fix = "use fp8 on " + gpu.name if gpu.fp8 else "use int4_awq or none on " + gpu.name
            if gpu.sm is None:
                fix = "NVFP4 bundles are built for a Blackwell target; the cpu target uses fp8"
            problems.append(((("quantize", field)),
                             f"NVFP4 needs Blackwell (sm100+), target {gpu.name} is "
                             f"{sm_label(gpu.sm)}; {fix}"))
        if value == "fp8" and gpu.sm is not None and not gpu.fp8:
            problems.append((("quantize", field),
                             f"FP8 needs sm89+ (Ada, Hopper, Blackwell), target {gpu.name} is "
                             f"{sm_label(gpu.sm)}; use int4_awq or none"))
    if q.algo == "w4a8_awq" and gpu.sm is not None and not gpu.fp8:
        problems.append((("quantize", "algo"),
                         f"w4a8_awq uses FP8 activations and needs sm89+, target {gpu.name} is "
                         f"{sm_label(gpu.sm)}; use int4_awq"))

    if b.backend == "reference" and recipe.target.gpu != "cpu":
        problems.append((("build", "backend"),
                         f"backend 'reference' runs on the CPU only, target is {recipe.target.gpu}; "
                         "use backend tensorrt or pytorch, or target gpu cpu"))
    if recipe.target.gpu == "cpu" and b.backend != "reference":
        problems.append((("target", "gpu"),
                         f"target 'cpu' needs backend 'reference' (got '{b.backend}'); "
                         "TensorRT-LLM runs on NVIDIA GPUs only"))
    if recipe.target.gpu == "cpu" and recipe.target.world_size != 1:
        problems.append((("target", "tensor_parallel"),
                         "target 'cpu' runs one process; set tensor_parallel and pipeline_parallel to 1"))
    if b.backend == "reference" and q.algo in ("int4_awq", "w4a8_awq"):
        problems.append((("quantize", "algo"),
                         f"the reference backend dequantizes fp8 and nvfp4 only, not {q.algo}"))

    if b.max_num_tokens < b.max_batch_size:
        problems.append((("build", "max_num_tokens"),
                         f"max_num_tokens ({b.max_num_tokens}) must be >= max_batch_size "
                         f"({b.max_batch_size}): each scheduled request needs at least one token"))
    if b.max_input_len is not None and b.max_input_len > b.max_seq_len:
        problems.append((("build", "max_input_len"),
                         f"max_input_len ({b.max_input_len}) exceeds max_seq_len ({b.max_seq_len})"))
    if q.calibration.seq_len > b.max_seq_len:
        problems.append((("quantize", "calibration", "seq_len"),
                         f"calibration seq_len ({q.calibration.seq_len}) exceeds build.max_seq_len "
                         f"({b.max_seq_len})"))

    cand = recipe.gates.throughput.candidate
    at = ("gates", "throughput", "candidate")
    if cand.kind == "endpoint" and not (cand.url and cand.model):
        problems.append(((*at, "url" if not cand.url else "model"),
                         "candidate kind 'endpoint' needs url and model (the served model name)"))
    if cand.kind == "triton" and b.backend != "reference":
        problems.append(((*at, "kind"), "a tritonserver with the TensorRT-LLM backend is not wired into the "
                         "throughput gate yet; use trtllm-serve (the default for this backend) or endpoint"))
    if cand.kind == "trtllm-serve" and b.backend == "reference":
        problems.append(((*at, "kind"), "trtllm-serve does not serve reference bundles; use auto or triton"))
    base = recipe.gates.throughput.baseline
    if base.kind == "endpoint" and not base.url:
        problems.append((("gates", "throughput", "baseline", "url"),
                         "baseline kind 'endpoint' needs url (e.g. http://127.0.0.1:8000 or ${BASELINE_URL})"))
    if base.kind == "vllm" and base.protocol != "openai":
        problems.append((("gates", "throughput", "baseline", "protocol"),
                         "a started vLLM baseline speaks openai; protocol triton is for kind 'endpoint'"))

    problems += _accuracy_rules(recipe, recipe_dir)
    problems += _tune_rules(recipe)
    names = [w.name for w in recipe.gates.throughput.workloads]
    if len(set(names)) != len(names):
        problems.append((("gates", "throughput", "workloads"), "workload names must be unique"))
    for i, c in enumerate(recipe.gates.throughput.criteria):
        w = next((w for w in recipe.gates.throughput.workloads if w.name == c.workload), None)
        if w is None:
            problems.append((("gates", "throughput", "criteria", i, "workload"),
                             f"unknown workload '{c.workload}'; known: {', '.join(names) or 'none'}"))
        elif c.concurrency not in w.concurrency:
            problems.append((("gates", "throughput", "criteria", i, "concurrency"),
                             f"concurrency {c.concurrency} is not in workload '{w.name}' sweep "
                             f"{w.concurrency}"))
    for i, w in enumerate(recipe.gates.throughput.workloads):
        if w.input_len + w.output_len > b.max_seq_len:
            problems.append((("gates", "throughput", "workloads", i, "input_len"),
                             f"input_len + output_len ({w.input_len + w.output_len}) exceeds "
                             f"build.max_seq_len ({b.max_seq_len})"))
        if w.kind == "shared-prefix" and w.prefix_len >= w.input_len:
            problems.append((("gates", "throughput", "workloads", i, "prefix_len"),
                             "prefix_len must be smaller than input_len"))
    return problems


def _accuracy_rules(recipe: Recipe, recipe_dir: Path | None) -> list[Problem]:
    acc = recipe.gates.accuracy
    if not acc.enabled:
        return []
    problems: list[Problem] = []
    reference = recipe.build.backend == "reference"
    at = ("gates", "accuracy")
    if acc.teacher_forced is True and not reference:
        problems.append(((*at, "teacher_forced"),
                         f"teacher-forced metrics run in-process on the reference backend; for backend "
                         f"'{recipe.build.backend}' leave teacher_forced unset or false and gate on lm-eval tasks"))
    for i, t in enumerate(acc.tasks):
        if t.kind != "lm-eval":
            if not reference:
                shipped = {"multiple-choice": "trtbuild_mc_facts", "exact-match": "trtbuild_copy"}[t.kind]
                problems.append(((*at, "tasks", i, "kind"),
                                 f"kind '{t.kind}' runs in-process on the reference backend; on backend "
                                 f"'{recipe.build.backend}' use kind lm-eval (the shipped sets are lm-eval "
                                 f"tasks too, e.g. data: {shipped})"))
            for key in ("filter", "num_fewshot"):
                if getattr(t, key) is not None:
                    problems.append(((*at, "tasks", i, key), f"'{key}' applies to kind lm-eval only"))
    if not any(t.kind == "lm-eval" for t in acc.tasks):
        return problems
    inc = acc.lm_eval.include_path
    if inc is not None and recipe_dir is not None and not (recipe_dir / inc).is_dir():
        problems.append(((*at, "lm_eval", "include_path"),
                         f"{recipe_dir / inc} is not a directory; give the directory of your lm-eval task YAMLs "
                         "(relative to the recipe), or leave it out for the shipped tasks"))
    for side in ("candidate", "baseline"):
        srv = getattr(acc.lm_eval, side)
        where = (*at, "lm_eval", side)
        if srv.kind == "endpoint" and not (srv.url and srv.model):
            problems.append(((*where, "url" if not srv.url else "model"),
                             "kind 'endpoint' needs url and model (the served model name)"))
        if srv.kind == "reference" and not reference:
            problems.append(((*where, "kind"), f"the reference server runs on the CPU; backend "
                             f"'{recipe.build.backend}' uses trtllm-serve, vllm or endpoint"))
    if acc.lm_eval.candidate.kind == "vllm":
        problems.append(((*at, "lm_eval", "candidate", "kind"),
                         "the candidate is the built bundle, which vLLM does not serve; use auto, "
                         "trtllm-serve or endpoint"))
    if acc.lm_eval.candidate.kind == "trtllm-serve" and reference:
        problems.append(((*at, "lm_eval", "candidate", "kind"),
                         "a reference bundle is served by the reference server (kind auto or reference)"))
    return problems


def _tune_rules(recipe: Recipe) -> list[Problem]:
    from pipeline.tune.settings import space_problems

    t = recipe.tune
    problems: list[Problem] = list(space_problems(recipe))
    names = [w.name for w in recipe.gates.throughput.workloads]
    for i, w in enumerate(t.objective.workloads or []):
        if w not in names:
            problems.append((("tune", "objective", "workloads", i),
                             f"unknown workload '{w}'; tune measures gates.throughput workloads: "
                             f"{', '.join(names) or 'none'}"))
    if t.enabled and recipe.gates.throughput.candidate.kind == "endpoint":
        problems.append((("tune", "enabled"), "tune starts the candidate per point; a candidate of kind "
                         "'endpoint' is not started by trtbuild: set tune.enabled false or serve it with auto"))
    return problems
