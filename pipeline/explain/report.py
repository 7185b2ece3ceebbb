"""Put the plan together, check it, and write DIR/explain.json, DIR/triton_repo/ and
DIR/llm_api_options.yaml (pytorch bundles)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.explain import checks, files
from pipeline.explain.processes import Layout, Planner, StagePlan
from pipeline.gpu import schedule
from pipeline.recipe.load import LoadedRecipe
from pipeline.util import atomic
from pipeline.util.container import named_run

EXPLAIN_FORMAT = 1


@dataclass
class Explained:
    recipe: str
    name: str
    target: dict[str, Any]
    stages: list[StagePlan]
    switch: schedule.SwitchPlan
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": EXPLAIN_FORMAT, "recipe": self.recipe, "name": self.name, "target": self.target,
                "stages": [s.to_json() for s in self.stages],
                "switch": {"strategy": self.switch.strategy, "reason": self.switch.reason,
                           "kv_cache_free_gpu_mem_fraction": self.switch.kv_cache_free_gpu_mem_fraction,
                           "version_gpu_memory_gib": self.switch.version_gib, "downtime": self.switch.downtime},
                "problems": self.problems, "warnings": self.warnings, "files": self.files}


def explain(loaded: LoadedRecipe, *, artifacts: Path = Path("artifacts"), out_dir: Path | None = None) -> Explained:
    """The plan of `loaded` on its target; with `out_dir`, the files the run would write are rendered
    there too (and checked). Nothing heavy runs and nothing outside `out_dir` is written."""
    from pipeline.runner.runner import Runner

    r = loaded.recipe
    fingerprints = {p.name: p.fingerprint for p in Runner(loaded, artifacts=artifacts).plan()}
    planner = Planner(loaded, Layout(artifacts, fingerprints))
    switch = schedule.switch_plan(r, planner.quantized)
    stages = [planner.fetch(), planner.quantize(), planner.build(), planner.tune(), planner.accuracy(),
              planner.throughput(), planner.release(), planner.publish(switch)]
    for st in stages:  # container runs as the run starts them: --init and a name to stop them by
        for proc in st.processes:
            proc.argv = named_run(proc.argv, proc.role.split(" ")[0])[0]
    ex = Explained(str(loaded.path), r.name, {"gpu": r.target.gpu, "gpu_memory_gib": schedule.gpu_memory_gib(r),
                                               "tensor_parallel": r.target.tensor_parallel,
                                               "pipeline_parallel": r.target.pipeline_parallel,
                                               "backend": r.build.backend}, stages, switch)
    ex.problems += [loaded.with_origin(p) for p in planner.problems]
    if switch.reason.startswith("PROBLEM: "):
        ex.problems.append(loaded.with_origin(f"publish.switch: {switch.reason.removeprefix('PROBLEM: ')}"))
    ex.problems += checks.memory(r, stages)
    ex.problems += checks.argv(stages)
    ex.problems += checks.unmounted_paths(stages)
    ex.warnings += checks.where_processes_run(r, stages)
    if r.build.backend == "tensorrt" and r.build.tensorrt.executor.kind == "container":
        # an engine loads only under the TensorRT it was built with: the serving image must match
        ex.warnings.append(f"build image {r.build.tensorrt.executor.image}: its TensorRT version is not in the "
                           "upstream records (containers.json); the bundle records the probed versions, and "
                           "`trtbuild check BUNDLE --image <serving image>` refuses a mismatch before deploy")
    if planner.source is None and schedule.on_gpu(r):
        ex.warnings.append(f"GPU memory not checked: {planner.source_from}")
    if out_dir is not None:
        rendered = files.render(loaded, out_dir, switch)
        ex.files = rendered.files
        ex.problems += rendered.problems
    ex.problems = list(dict.fromkeys(ex.problems))  # two gates may start the same server
    return ex


def write_explain(loaded: LoadedRecipe, out_dir: Path, *, artifacts: Path = Path("artifacts")) -> Explained:
    """explain() into `out_dir`, replacing what an earlier explain wrote there; explain.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".explain-", dir=out_dir) as tmp:
        staged = Path(tmp)
        ex = explain(loaded, artifacts=artifacts, out_dir=staged)
        for name in ("triton_repo", "llm_api_options.yaml"):
            target = out_dir / name
            if target.is_dir():
                import shutil

                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if (staged / name).exists():
                (staged / name).rename(target)
    atomic.write_text(out_dir / "explain.json", json.dumps(ex.to_json(), indent=2) + "\n")
    return ex
