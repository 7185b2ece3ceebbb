"""Every process a run would start, per stage: argv, environment names, GPUs, memory, phase.

argv comes from the same functions the stages call (trtllm_build_argv, TrtllmServe.argv,
VllmServer.argv, lmeval.argv, command_argv for executors), so the plan cannot drift from the run.
Processes of one stage with the same `phase` run at the same time. Ports are the ones a run
picks at start (shown as 8000+); paths of stages that have not run yet hold PENDING where
their fingerprint will be.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import StageError
from pipeline.gpu import schedule
from pipeline.gpu.sizing import GiB, ModelSize, recipe_size
from pipeline.recipe.load import LoadedRecipe, interpolate_string

PORT = 8000  # illustrative: a run picks free loopback ports


@dataclass
class Process:
    role: str
    argv: list[str]
    env: list[str] = field(default_factory=list)  # names only; values may be secrets
    gpus: list[int] = field(default_factory=list)
    gpu_memory_gib: float = 0.0  # per GPU listed
    phase: str = "main"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StagePlan:
    name: str
    processes: list[Process] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "processes": [p.to_json() for p in self.processes], "notes": self.notes}


@dataclass
class Layout:
    """Where the run's inputs and outputs live (absolute), from the stage fingerprints."""

    artifacts: Path
    fingerprints: dict[str, str | None]

    def out(self, stage: str, *rel: str) -> Path:
        fp = self.fingerprints.get(stage)
        return self.artifacts.resolve() / "cache" / stage / (fp or "PENDING") / Path(*rel)


def resolve(argv: list[str]) -> list[str]:
    """argv[0] as the run would find it: absolute paths stay, bare names are looked up on PATH."""
    if not argv or Path(argv[0]).is_absolute():
        return list(argv)
    found = shutil.which(argv[0])
    return [found or argv[0], *argv[1:]]


def trtbuild_argv(recipe_path: Path, *extra: str) -> list[str]:
    exe = shutil.which("trtbuild") or str(Path(sys.executable).with_name("trtbuild"))
    return [exe, "run", str(recipe_path), *extra]


class Planner:
    """Builds the per-stage process lists for one recipe."""

    def __init__(self, loaded: LoadedRecipe, layout: Layout) -> None:
        self.loaded = loaded
        self.r = loaded.recipe
        self.layout = layout
        self.dir = loaded.path.parent
        self.gpu_gib = schedule.gpu_memory_gib(self.r)
        self.source, self.source_from = recipe_size(self.r, self.dir, quantized=False)
        self.quantized, _ = recipe_size(self.r, self.dir, quantized=True)
        self.problems: list[str] = []

    # ------------------------------------------------------------------ helpers
    @property
    def world(self) -> list[int]:
        return list(range(self.r.target.world_size)) if schedule.on_gpu(self.r) else []

    def source_dir(self) -> Path:
        return self.layout.out("fetch", "checkpoint")

    def bundle_dir(self) -> Path:
        return self.layout.out("build", "bundle")

    def inproc(self, role: str, *, phase: str = "main", gpus: list[int] | None = None, gib: float = 0.0,
               note: str = "") -> Process:
        return Process(role, trtbuild_argv(self.loaded.path), gpus=gpus or [], gpu_memory_gib=round(gib, 2),
                       phase=phase, note=note or "in the trtbuild process")

    # ------------------------------------------------------------------ stages
    def fetch(self) -> StagePlan:
        env = ["HF_TOKEN", "HF_HOME"] if self.r.source.repo else []
        p = self.inproc("download checkpoint" if self.r.source.repo else "read checkpoint")
        p.env = env
        return StagePlan("fetch", [p], [f"model config for sizing: {self.source_from}"])

    def quantize(self) -> StagePlan:
        from pipeline.stages.quantize import exports_for

        plan = StagePlan("quantize")
        q = self.r.quantize
        if q.algo == "none" and q.kv_cache == "none":
            plan.processes.append(self.inproc("copy checkpoint (no quantization)"))
            return plan
        calib = self._calibration_memory()
        plan.processes.append(self.inproc(f"ModelOpt calibration ({q.algo}/{q.kv_cache}, "
                                          f"{q.calibration.samples} samples)", phase="calibrate",
                                          gpus=calib[0], gib=calib[1], note=calib[2]))
        for kind in sorted(exports_for(self.loaded)):
            gpus, gib, note = self._export_memory(kind)
            plan.processes.append(self.inproc(f"ModelOpt export: {kind}", phase=f"export-{kind}", gpus=gpus,
                                              gib=gib, note=note))
        return plan

    def _memory_plan(self) -> Any:
        """plan_memory as quantize will call it on the runner's GPUs (None: CPU or size unknown)."""
        from pipeline.errors import QuantizeError
        from pipeline.quant.memory import plan_memory

        cfg = self._config()
        if cfg is None or not schedule.on_gpu(self.r):
            return None
        try:
            return plan_memory(cfg, gpus=[int(self.gpu_gib * GiB)] * len(self.world), cpu_free=host_ram_bytes(),
                               dtype=self.r.source.dtype)
        except QuantizeError as e:
            self.problems.append(f"target: quantize on the runner's GPUs: {e}")
            return None

    @staticmethod
    def _gpu_share(max_memory: dict[Any, int], need: int) -> tuple[list[int], float]:
        """GPUs a device map uses and the GiB on each (its need spread over them, capped by their limit)."""
        gpus = sorted(int(k) for k in max_memory if k != "cpu")
        if not gpus:
            return [], 0.0
        per = min(need / len(gpus), max(max_memory[g] for g in gpus))
        return gpus, per / GiB

    def _calibration_memory(self) -> tuple[list[int], float, str]:
        mp = self._memory_plan()
        if mp is None:
            return [], 0.0, "CPU" if not schedule.on_gpu(self.r) else "model size unknown"
        gpus, gib = self._gpu_share(mp.max_memory, mp.need_bytes)
        return gpus, gib, mp.describe() + (f", device_map {mp.device_map}" if mp.device_map else "")

    def _export_memory(self, kind: str) -> tuple[list[int], float, str]:
        from pipeline.errors import QuantizeError
        from pipeline.quant.memory import export_placement

        mp = self._memory_plan()
        cfg = self._config()
        if mp is None or cfg is None:
            return [], 0.0, "CPU" if not schedule.on_gpu(self.r) else "model size unknown"
        try:
            placed = export_placement(mp, kind, config=cfg, cpu_free=host_ram_bytes(), dtype=self.r.source.dtype,
                                      algo=self.r.quantize.algo)
        except QuantizeError as e:
            self.problems.append(f"target: {e}")
            return [], 0.0, str(e)
        if placed.device == "cpu":
            return [], 0.0, placed.describe()
        gpus, gib = self._gpu_share(placed.max_memory, placed.need_bytes)
        return gpus, gib, placed.describe()

    def _config(self) -> dict[str, Any] | None:
        from pipeline.gpu.sizing import source_config

        return source_config(self.r, self.dir)[0]

    def build(self) -> StagePlan:
        plan = StagePlan("build")
        b = self.r.build
        if b.backend == "reference":
            plan.processes.append(self.inproc("link the unified checkpoint into the bundle"))
            return plan
        from pipeline.runner.executor import command_argv

        if b.backend == "tensorrt":
            from pipeline.backends.tensorrt import trtllm_build_argv

            argv = trtllm_build_argv(self.r, checkpoint_dir=self.layout.out("quantize", "out", "trtllm"),
                                     output_dir=self.bundle_dir() / "engine",
                                     timing_cache=Path(b.tensorrt.timing_cache).resolve())
            gib = (self.quantized.weights_per_gpu_gib(self.r.target.tensor_parallel, self.r.target.pipeline_parallel)
                   + 4.0) if self.quantized else 0.0
            plan.processes.append(Process("trtllm-build", resolve(command_argv(argv, b.tensorrt.executor)),
                                          gpus=self.world, gpu_memory_gib=round(gib, 2), phase="build",
                                          note="estimate: one rank's weights + 4 GiB builder workspace per GPU"))
            return plan
        from pipeline.runner.executor import WORKER_MODULE

        py = "python3" if b.pytorch.executor.kind == "container" else "python"
        # the spec file goes to a temporary directory beside the stage's log, in its workdir
        spec = self.layout.out("build", "trtbuild-exec-XXXX", "spec.json")
        argv = command_argv([py, "-m", WORKER_MODULE, str(spec)], b.pytorch.executor)
        if b.pytorch.executor.kind == "container":
            from pipeline.runner.executor import _package_root
            from pipeline.util.container import same_path_mounts

            root = str(_package_root())
            if not any(root == m or root.startswith(m.rstrip("/") + "/") for m in same_path_mounts(argv)):
                self.problems.append(f"build.pytorch.executor.command_prefix: the warm-up imports trtbuild from "
                                     f"{root} (PYTHONPATH) but the container does not mount it; add -v {root}:{root} "
                                     "or install trtbuild under a mounted directory")
        pl = self._trtllm_placement(self.quantized, b.pytorch.kv_cache_free_gpu_memory_fraction, "LLM warm-up: ")
        plan.processes.append(Process("LLM API warm-up load (tensorrt_llm.LLM)", resolve(argv), gpus=self.world,
                                      gpu_memory_gib=pl[0], phase="warm-up", note=pl[1]))
        return plan

    def _trtllm_placement(self, size: ModelSize | None, fraction: float, what: str) -> tuple[float, str]:
        """GiB per GPU (and why) of a TRT-LLM process holding a model of `size`."""
        if size is None or not schedule.on_gpu(self.r):
            return 0.0, "model size unknown" if schedule.on_gpu(self.r) else "CPU"
        p = schedule.kv_fraction_placement(size, self.r.target.tensor_parallel,
                                           self.r.target.pipeline_parallel, self.gpu_gib, fraction, what=what)
        return p.gpu_memory_gib, p.note

    def _vllm(self, side_name: str, model_dir: Path, size: ModelSize | None, python: str,
              extra: list[str], phase: str) -> Process:
        from pipeline.bench.vllm_server import VllmServer

        vg = schedule.vllm_gpu(self.r, size)
        if vg.problem:
            self.problems.append(vg.problem)
        server = VllmServer(python=interpolate_string(python), model_dir=model_dir, served_name=side_name,
                            max_model_len=self.r.build.max_seq_len, extra_args=list(extra), gpu_args=vg.args(),
                            port=PORT)
        tp = vg.tensor_parallel or 0
        gib = round(self.gpu_gib * (vg.gpu_memory_utilization or 0), 2)
        env = ["VLLM_CPU_KVCACHE_SPACE"] if not schedule.on_gpu(self.r) else []
        return Process(f"vLLM ({side_name})", resolve(server.argv()), env=env, gpus=list(range(tp)),
                       gpu_memory_gib=gib, phase=phase,
                       note=(f"{size.weights_per_gpu_gib(tp or 1):.1f} GiB weights per GPU; vLLM reserves "
                             f"{vg.gpu_memory_utilization} of each GPU") if size and tp else "CPU")

    def _trtllm_serve(self, srv: Any, model: Path, phase: str, role: str) -> Process:
        from pipeline.backends.trtllm_serve import TrtllmServe

        b = self.r.build
        bundle = self.bundle_dir()
        base = TrtllmServe(command=list(srv.command), model=model, backend="pytorch", tokenizer=self.source_dir(),
                           tp_size=self.r.target.tensor_parallel, pp_size=self.r.target.pipeline_parallel,
                           max_batch_size=b.max_batch_size, max_num_tokens=b.max_num_tokens,
                           max_seq_len=b.max_seq_len,
                           kv_cache_free_gpu_memory_fraction=srv.kv_cache_free_gpu_memory_fraction,
                           extra_args=list(srv.extra_args), port=PORT)
        if model == bundle:  # the candidate: what for_model picks from the bundle's manifest
            if b.backend == "tensorrt":
                base.model, base.backend, base.tokenizer = bundle / "engine", "tensorrt", bundle / "tokenizer"
            else:
                base.model, base.options = bundle / "checkpoint", bundle / "llm_api_options.yaml"
        size = self.quantized if model != self.source_dir() else self.source
        gib, note = self._trtllm_placement(size, srv.kv_cache_free_gpu_memory_fraction, "trtllm-serve: ")
        return Process(role, resolve(base.argv()), gpus=self.world, gpu_memory_gib=gib, phase=phase, note=note)

    def accuracy(self) -> StagePlan:
        from pipeline.eval import endpoints

        acc = self.r.gates.accuracy
        plan = StagePlan("accuracy")
        if not acc.enabled:
            plan.notes.append("disabled")
            return plan
        tf = acc.teacher_forced if acc.teacher_forced is not None else self.r.build.backend == "reference"
        if tf or any(t.kind != "lm-eval" for t in acc.tasks):
            plan.processes.append(self.inproc("teacher-forced metrics and offline tasks (reference runtime)",
                                              phase="in-process"))
        lm = [t for t in acc.tasks if t.kind == "lm-eval"]
        if not lm:
            return plan
        opts = acc.lm_eval
        for side in ("baseline", "candidate"):
            srv = getattr(opts, side)
            kind = endpoints.resolved_kind(side, srv, self.r.build.backend)
            phase = f"lm-eval {side}"
            if kind == "vllm":
                plan.processes.append(self._vllm(side, self.source_dir(), self.source,
                                                 srv.python or self.r.gates.throughput.baseline.python,
                                                 list(srv.extra_args), phase))
            elif kind == "trtllm-serve":
                model = self.bundle_dir() if side == "candidate" else self.source_dir()
                plan.processes.append(self._trtllm_serve(srv, model, phase, f"trtllm-serve ({side})"))
            elif kind == "reference":
                plan.processes.append(Process(f"reference OpenAI server ({side})", [sys.executable, "-m",
                                              "pipeline.backends.reference.openai_server", "..."], phase=phase,
                                              note="CPU"))
            else:
                plan.notes.append(f"{side}: existing endpoint {srv.url}")
            plan.processes.append(self._lm_eval(side, [t.data for t in lm], phase))
        plan.notes.append("each side's server runs only while its lm-eval runs (baseline first)")
        return plan

    def _lm_eval(self, side: str, tasks: list[str], phase: str) -> Process:
        from pipeline.eval import lmeval
        from pipeline.eval.lmeval_sides import settings_for

        try:
            settings = settings_for(self.loaded)
        except StageError as e:  # a missing include_path: the same error the stage would give
            self.problems.append(e.one_line())
            return Process(f"lm-eval client ({side})", [], phase=phase, note=str(e))
        ts = [lmeval.LmEvalTask(t, t) for t in tasks]
        ep = lmeval.Endpoint(f"http://127.0.0.1:{PORT}", side, self.source_dir())
        argv = lmeval.argv(settings, ts, ep, self.layout.out("accuracy", "lm-eval", side))
        return Process(f"lm-eval client ({side})", resolve(argv), env=["HF_DATASETS_CACHE", "HF_HOME"], phase=phase,
                       note="CPU; talks to the server of its phase over loopback")

    def throughput(self) -> StagePlan:
        tg = self.r.gates.throughput
        plan = StagePlan("throughput")
        if not tg.enabled:
            plan.notes.append("disabled")
            return plan
        from pipeline.stages.throughput import candidate_kind

        servers = schedule.throughput_servers(self.r, self.dir)
        self.problems.extend(servers.problems)
        together = servers.schedule == "together"
        plan.notes.append(f"schedule {servers.schedule}: {servers.reason}")
        b = tg.baseline
        if b.kind == "vllm":
            model_dir = self.source_dir() if b.checkpoint == "source" else self.layout.out("quantize", "out",
                                                                                           "unified")
            size = self.source if b.checkpoint == "source" else self.quantized
            plan.processes.append(self._vllm("baseline", model_dir, size, b.python, list(b.extra_args),
                                             "gate" if together else "baseline"))
        else:
            plan.notes.append(f"baseline: existing endpoint {b.url}")
        kind = candidate_kind(self.r)
        phase = "gate" if together else "candidate"
        if kind == "trtllm-serve":
            plan.processes.append(self._trtllm_serve(tg.candidate, self.bundle_dir(), phase,
                                                     "trtllm-serve (candidate)"))
        elif kind == "triton":
            plan.processes.append(Process("tritonserver (candidate)", resolve([
                "tritonserver", f"--model-repository={self.layout.out('throughput', '.candidate-repo')}",
                "--model-control-mode=explicit", f"--http-port={PORT + 1}"]), phase=phase,
                note="private server on a temporary repository; CPU"))
        else:
            plan.notes.append(f"candidate: existing endpoint {tg.candidate.url}")
        plan.processes.append(self.inproc("load generator (asyncio client)", phase=phase))
        return plan

    def tune(self) -> StagePlan:
        """The search space and the servers each trial starts (one at a time, alone on the GPUs)."""
        from pipeline.stages.throughput import candidate_kind
        from pipeline.tune.settings import describe

        plan = StagePlan("tune", notes=describe(self.r))
        if not self.r.tune.enabled:
            return plan
        kind = candidate_kind(self.r)
        if kind == "trtllm-serve":
            proc = self._trtllm_serve(self.r.gates.throughput.candidate, self.bundle_dir(), "tune",
                                      "trtllm-serve (tune point)")
            proc.note = "started once per trial with the point's settings as flags and LLM API options"
            plan.processes.append(proc)
        elif kind == "triton":
            plan.processes.append(Process("tritonserver (tune)", resolve([
                "tritonserver", f"--model-repository={self.layout.out('tune', '.candidate-repo')}",
                "--model-control-mode=explicit", f"--http-port={PORT + 1}"]), phase="tune",
                note="private server; each trial loads the point as its own model, then unloads it; CPU"))
        plan.processes.append(self.inproc("load generator (asyncio client)", phase="tune"))
        return plan

    def release(self) -> StagePlan:
        rel = self.r.release
        plan = StagePlan("release")
        if not rel.enabled:
            plan.notes.append("disabled")
            return plan
        env = ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "TRTBUILD_STORE"]
        if rel.store.startswith("s3://") or "TRTBUILD_STORE" in rel.store:
            env += ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"]
        p = self.inproc(f"upload bundle to {rel.store}, register in MLflow {rel.registry}")
        p.env = env
        plan.processes.append(p)
        return plan

    def publish(self, switch: schedule.SwitchPlan) -> StagePlan:
        pub = self.r.publish
        plan = StagePlan("publish")
        if not pub.enabled:
            plan.notes.append("disabled")
            return plan
        plan.notes.append(f"switch {switch.strategy}: {switch.reason}; downtime: {switch.downtime}")
        gib = switch.version_gib
        url = pub.server_url or "(none: repository only)"
        plan.processes.append(self.inproc(f"render and write version N+1 into {pub.repository}", phase="write"))
        serving = Process("tritonserver: version N (serving)", [], gpus=self.world, gpu_memory_gib=gib,
                          phase="switch", note=f"existing server {url}; memory with KV fraction "
                          f"{switch.kv_cache_free_gpu_mem_fraction}")
        loading = Process("tritonserver: version N+1 (loading)", [], gpus=self.world, gpu_memory_gib=gib,
                          phase="switch", note="loads beside version N")
        if switch.strategy == "side-by-side":
            second = (schedule.kv_fraction_placement(self.quantized, self.r.target.tensor_parallel,
                                                     self.r.target.pipeline_parallel, self.gpu_gib,
                                                     switch.kv_cache_free_gpu_mem_fraction, used_gib=gib)
                      if self.quantized is not None and schedule.on_gpu(self.r) else None)
            if second is not None:
                loading.gpu_memory_gib = second.gpu_memory_gib
                loading.note = "loads beside version N: " + second.note
            plan.processes += [serving, loading]
        elif switch.strategy == "drain":
            serving.phase, serving.role = "drain", "tritonserver: version N (unloaded first)"
            loading.phase, loading.note = "load", "loads after version N is unloaded; the model answers nothing"
            plan.processes += [serving, loading]
        else:
            plan.notes.append("rolling: each replica restarts into version N+1 (k8s Deployment, maxUnavailable 0)")
        return plan


def host_ram_bytes() -> int:
    """The GPU host's RAM for the offload plan: $TRTBUILD_HOST_RAM_GIB, else 1 TiB (a typical 8-GPU server)."""
    import os

    return int(float(os.environ.get("TRTBUILD_HOST_RAM_GIB", "1024")) * GiB)
