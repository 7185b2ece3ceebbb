"""Runtime settings the tune stage searches: which exist per backend, their defaults and checks.

One vocabulary (the issue's names) for every backend; `apply.py` turns a chosen set into what each
server takes (the reference model's Triton parameters, trtllm-serve flags and LLM API options,
Triton tensorrt_llm parameters).
"""

from __future__ import annotations

from typing import Any

from pipeline.recipe.schema import Recipe

# setting -> (python type, backends that have it, what it is)
SETTINGS: dict[str, tuple[type, tuple[str, ...], str]] = {
    "max_batch_size": (int, ("reference", "tensorrt", "pytorch"),
                       "requests scheduled together (at most build.max_batch_size)"),
    "max_num_tokens": (int, ("reference", "tensorrt", "pytorch"),
                       "tokens per scheduled step (at most build.max_num_tokens)"),
    "instances": (int, ("reference",), "Triton model instances (each its own runtime and batch)"),
    "threads": (int, ("reference",), "torch threads per instance (0: torch's default)"),
    "kv_cache_free_gpu_memory_fraction": (float, ("tensorrt", "pytorch"),
                                          "share of free GPU memory given to the KV cache"),
    "enable_chunked_context": (bool, ("tensorrt", "pytorch"), "split long prefills across steps"),
    "batch_scheduler_policy": (str, ("tensorrt", "pytorch"), "guaranteed_no_evict or max_utilization"),
}
POLICIES = ("guaranteed_no_evict", "max_utilization")


def backend_settings(backend: str) -> list[str]:
    return [name for name, (_, backends, _) in SETTINGS.items() if backend in backends]


def defaults(recipe: Recipe) -> dict[str, Any]:
    """The settings a build serves with when nothing is tuned (the 'default' point)."""
    b = recipe.build
    out: dict[str, Any] = {"max_batch_size": b.max_batch_size, "max_num_tokens": b.max_num_tokens}
    if b.backend == "reference":
        out.update(instances=recipe.publish.instances, threads=b.reference.threads or 0)
    else:
        out.update(kv_cache_free_gpu_memory_fraction=b.pytorch.kv_cache_free_gpu_memory_fraction,
                   enable_chunked_context=b.pytorch.enable_chunked_prefill, batch_scheduler_policy=POLICIES[0])
    return out


def _powers_up_to(top: int, *, least: int = 1) -> list[int]:
    vals, v = [], least
    while v < top:
        vals.append(v)
        v *= 2
    return [*vals, top]


def default_space(recipe: Recipe) -> dict[str, list[Any]]:
    """A sensible search when the recipe gives no space: batch sizes in powers of two up to the
    build's limit, and per backend the settings that most often move goodput."""
    b = recipe.build
    mbs = _powers_up_to(b.max_batch_size)
    if b.backend == "reference":
        # the reference runtime batches in waves: a second instance overlaps two waves
        return {"max_batch_size": mbs, "instances": [1, 2]}
    return {"max_batch_size": mbs[-3:], "max_num_tokens": sorted({max(b.max_batch_size, b.max_num_tokens // 2),
                                                                  b.max_num_tokens}),
            "enable_chunked_context": [True, False]}


def space_of(recipe: Recipe) -> dict[str, list[Any]]:
    """The recipe's space (unset settings keep their default value) or the default space."""
    if recipe.tune.space:
        return {str(k): list(v) for k, v in recipe.tune.space.items()}
    return default_space(recipe)


def space_problems(recipe: Recipe) -> list[tuple[tuple[str | int, ...], str]]:
    """Settings a backend does not have, and values out of their range (recipe rules)."""
    space = recipe.tune.space or {}
    b = recipe.build
    out: list[tuple[tuple[str | int, ...], str]] = []
    have = backend_settings(b.backend)
    for name, values in space.items():
        at: tuple[str | int, ...] = ("tune", "space", name)
        if name not in have:
            out.append((at, f"backend '{b.backend}' has no runtime setting '{name}'; it has {', '.join(have)}"))
            continue
        if not values:
            out.append((at, f"give at least one value for {name}"))
            continue
        kind = SETTINGS[name][0]
        for i, v in enumerate(values):
            why = _value_problem(name, kind, v, recipe)
            if why:
                out.append(((*at, i), why))
    return out


def _value_problem(name: str, kind: type, v: Any, recipe: Recipe) -> str | None:
    b = recipe.build
    if kind is bool:
        return None if isinstance(v, bool) else f"{name} takes true or false, not {v!r}"
    if kind is str:
        return None if v in POLICIES else f"{name} is one of {', '.join(POLICIES)}, not {v!r}"
    if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not isinstance(v, int)):
        return f"{name} takes {'an integer' if kind is int else 'a number'}, not {v!r}"
    if kind is float and not 0 < v <= 1:
        return f"{name} is a fraction in (0, 1], not {v}"
    limits = {"max_batch_size": b.max_batch_size, "max_num_tokens": b.max_num_tokens}
    if name in limits and not 1 <= v <= limits[name]:
        return f"{name} {v} is outside 1..{limits[name]} (build.{name}, the limit the bundle was built for)"
    if name == "instances" and not 1 <= v <= 8:
        return f"instances {v} is outside 1..8"
    if name == "threads" and not 0 <= v <= 256:
        return f"threads {v} is outside 0..256 (0: torch's default)"
    return None


def describe(recipe: Recipe) -> list[str]:
    """The search space as lines (`plan --explain`)."""
    space = space_of(recipe)
    base = defaults(recipe)
    points = 1
    for v in space.values():
        points *= len(v)
    t = recipe.tune
    lines = [f"tune: {'enabled' if t.enabled else 'disabled'}; backend {recipe.build.backend}; "
             f"{points} points; budget {t.budget_s} s; {'recipe' if t.space else 'default'} space"]
    for name, values in space.items():
        lines.append(f"  {name}: {values} (default {base.get(name)}; {SETTINGS[name][2]})")
    fixed = {k: v for k, v in base.items() if k not in space}
    if fixed:
        lines.append("  fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    lines.append("  profiles: " + ", ".join(f"{p.name} ({p.goal})" for p in t.profiles))
    return lines
