"""Checks of a plan: GPU memory per phase, argv against upstream's recorded flags, where each
process can run. Each returns one-line problems (or warnings about this machine, not the plan)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.explain.processes import StagePlan
from pipeline.gpu import schedule
from pipeline.util.container import is_container_run, same_path_mounts

# the upstream tools whose command lines are checked against tests/data/upstream records
CHECKED_TOOLS = ("trtllm-build", "trtllm-serve")


def memory(recipe: Any, stages: list[StagePlan]) -> list[str]:
    """No two processes of one phase may need more than a GPU has."""
    gpu = schedule.gpu_memory_gib(recipe)
    if not gpu:
        return []
    out = []
    for st in stages:
        use: dict[tuple[str, int], list[tuple[str, float]]] = defaultdict(list)
        for p in st.processes:
            for g in p.gpus:
                use[(p.phase, g)].append((p.role, p.gpu_memory_gib))
        for (phase, g), procs in sorted(use.items()):
            total = sum(m for _, m in procs)
            if total > gpu:
                who = " + ".join(f"{role} {m:.1f}" for role, m in procs)
                out.append(f"{st.name}: phase '{phase}' needs {total:.1f} GiB on GPU {g} ({who}) but a "
                           f"{recipe.target.gpu} has {gpu:.0f} GiB")
    return out


def tool_args(argv: list[str]) -> tuple[str, list[str]] | None:
    """(tool, argv from the tool on) when argv runs a checked upstream tool (directly or in a container)."""
    for i, a in enumerate(argv):
        name = Path(a).name
        if name in CHECKED_TOOLS:
            return name, argv[i:]
    return None


def argv(stages: list[StagePlan]) -> list[str]:
    from pipeline import upstream

    out = []
    for st in stages:
        for p in st.processes:
            found = tool_args(p.argv)
            if found is None:
                continue
            out += [f"{st.name}: {p.role}: {msg}" for msg in upstream.check_argv(found[0], found[1][1:])]
    return out


def unmounted_paths(stages: list[StagePlan]) -> list[str]:
    """A container run is given host paths (checkpoints, engines, logs): each must be inside a
    volume mounted at the same path, or the tool inside sees nothing there."""
    out = []
    for st in stages:
        for p in st.processes:
            if not is_container_run(p.argv):
                continue
            mounts = same_path_mounts(p.argv)
            for prev, a in zip(p.argv[1:], p.argv[2:], strict=False):
                if prev in ("-v", "--volume", "--mount"):
                    continue
                value = a.split("=", 1)[1] if a.startswith("--") and "=" in a else a
                if not value.startswith("/") or value.startswith("/dev/"):
                    continue
                if not any(value == m or value.startswith(m.rstrip("/") + "/") for m in mounts):
                    out.append(f"{st.name}: {p.role}: {value} is not inside a volume the container mounts at the "
                               f"same path (mounted: {', '.join(mounts) or 'none'}); mount it in the executor's "
                               "command_prefix (e.g. -v ${PWD}:${PWD}) or keep artifacts under it")
                    break
    return out


def where_processes_run(recipe: Any, stages: list[StagePlan]) -> list[str]:
    """What this machine lacks to run the plan as is (warnings: plans are reviewed anywhere)."""
    out = []
    inside = Path("/.dockerenv").exists()
    for st in stages:
        for p in st.processes:
            if not p.argv:
                continue
            if is_container_run(p.argv):
                if inside:
                    out.append(f"{st.name}: {p.role} starts a container (`{p.argv[0]} run`) but this machine is "
                               "itself a container: run trtbuild on the GPU host (see ci/README.md)")
                elif shutil.which(p.argv[0]) is None and not Path(p.argv[0]).is_absolute():
                    out.append(f"{st.name}: {p.role}: {p.argv[0]} not found on this machine")
            elif not Path(p.argv[0]).exists():
                out.append(f"{st.name}: {p.role}: {p.argv[0]} not found on this machine")
    return sorted(set(out))
