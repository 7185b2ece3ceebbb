"""Serving profiles: named runtime settings with their measured figures, carried by the bundle.

`profiles.json` sits beside the manifest and is listed in it, so the profiles are part of the
bundle id. Why: what a release serves with (its batch size, its instances) decides its latency
and goodput as much as its weights do, and a bundle id must name one measured behaviour; a
profile file outside the digest could change under a released id. The engine or checkpoint
files are hard-linked from the build's bundle, so a tuned bundle costs a few KiB, and a store
deduplicates the unchanged files by their sha256.

Rendering (pipeline/triton/render.py) and the throughput gate read the settings through
`serving_settings`; a bundle without profiles serves its build settings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pipeline.bundle import MANIFEST, Bundle, load_bundle, write_manifest
from pipeline.errors import TrtbuildError
from pipeline.util import atomic
from pipeline.util.files import link_tree

PROFILES_FILE = "profiles.json"
PROFILES_SCHEMA = 1


class ProfileError(TrtbuildError):
    """A profile that the bundle does not carry was asked for."""


def write_tuned_bundle(src: Path, dst: Path, *, profiles: dict[str, dict[str, Any]], default: str,
                       tune: dict[str, Any]) -> str:
    """`src`'s files (hard-linked) + profiles.json under `dst`, manifest last; returns the new bundle id.

    `profiles`: name -> {"settings": {...}, "measured": {...}}; `tune`: the search's summary
    (budget, points, noise rule), kept with the profiles so a reader sees how they were chosen.
    """
    if default not in profiles:
        raise ValueError(f"default profile {default!r} is not among {sorted(profiles)}")
    bundle = load_bundle(src)  # verified: a tuned bundle never inherits a corrupted file
    dst.mkdir(parents=True, exist_ok=False)
    link_tree(src, dst)
    (dst / MANIFEST).unlink(missing_ok=True)
    doc = {"schema_version": PROFILES_SCHEMA, "default": default, "profiles": profiles, "tune": tune,
           "build_bundle_id": bundle.id}
    from pipeline.tune.report import _finite

    atomic.write_text(dst / PROFILES_FILE, json.dumps(_finite(doc), indent=2, sort_keys=True, allow_nan=False) + "\n")
    m = bundle.manifest
    runtime = {**m["runtime"], "profiles": PROFILES_FILE, "default_profile": default}
    return write_manifest(dst, name=m["name"], backend=m["backend"], provenance=m["provenance"],
                          compatibility=m["compatibility"], runtime=runtime)


def read_profiles(bundle: Bundle) -> dict[str, Any] | None:
    """The bundle's profiles document, or None for a bundle that was not tuned."""
    rel = bundle.manifest.get("runtime", {}).get("profiles")
    if not rel:
        return None
    return dict(json.loads((bundle.dir / rel).read_text()))


def profile_names(bundle: Bundle) -> list[str]:
    doc = read_profiles(bundle)
    return sorted(doc["profiles"]) if doc else []


def build_settings(bundle: Bundle) -> dict[str, Any]:
    """What the bundle serves with untuned: its build limits."""
    rt = bundle.manifest.get("runtime", {})
    compat = bundle.compatibility
    out = {k: rt.get(k, compat.get(k)) for k in ("max_batch_size", "max_num_tokens")}
    return {k: v for k, v in out.items() if v is not None}


def resolve(bundle: Bundle, profile: str | None) -> tuple[str | None, dict[str, Any]]:
    """(profile name, settings): the named profile, the bundle's default one, or (None, build settings).

    Asking for a profile of a bundle without profiles, or for one it lacks, is an error naming
    what exists (no silent fallback: a release served with other settings than asked is wrong).
    """
    doc = read_profiles(bundle)
    if doc is None:
        if profile is not None:
            raise ProfileError(f"bundle {bundle.short_id} has no profiles (it was not tuned); leave out "
                               f"--profile/profile: '{profile}' or enable tune in the recipe")
        return None, build_settings(bundle)
    name = profile or str(doc["default"])
    if name not in doc["profiles"]:
        raise ProfileError(f"bundle {bundle.short_id} has no profile '{name}'; it has "
                           f"{', '.join(sorted(doc['profiles']))}")
    return name, {**build_settings(bundle), **doc["profiles"][name]["settings"]}


def serving_settings(bundle: Bundle, profile: str | None, explicit: dict[str, Any] | None = None
                     ) -> tuple[str | None, dict[str, Any]]:
    """The settings to serve with: the profile's, with `explicit` ones (a tune point) on top."""
    if explicit:
        return None, {**build_settings(bundle), **explicit}
    return resolve(bundle, profile)


def serving_options(bundle: Bundle, options: Any) -> tuple[Any, dict[str, Any]]:
    """For the renderer: (ServingOptions with the settings applied, extra Triton parameters of the
    main model). The one place a profile becomes Triton configuration."""
    name, s = serving_settings(bundle, getattr(options, "profile", None), dict(getattr(options, "settings", ())))
    changes: dict[str, Any] = {}
    params: dict[str, Any] = {}
    if bundle.backend == "reference":
        if "instances" in s:
            changes["instances"] = int(s["instances"])
        # read by pipeline/backends/reference/triton_model.py, which hands them to the runtime
        for key in ("max_batch_size", "max_num_tokens", "threads"):
            if key in s:
                params[key] = {"string_value": str(int(s[key]))}
    else:
        if "kv_cache_free_gpu_memory_fraction" in s and options.kv_cache_free_gpu_mem_fraction is None:
            changes["kv_cache_free_gpu_mem_fraction"] = float(s["kv_cache_free_gpu_memory_fraction"])
        if "enable_chunked_context" in s:
            changes["enable_chunked_context"] = bool(s["enable_chunked_context"])
        if "batch_scheduler_policy" in s:
            changes["batch_scheduler_policy"] = str(s["batch_scheduler_policy"])
    if name is not None:
        params["profile"] = {"string_value": name}
    return dataclasses.replace(options, **changes), params


def describe(bundle: Bundle) -> list[dict[str, Any]]:
    """Profiles as rows for `trtbuild list` (name, default, settings, measured figures)."""
    doc = read_profiles(bundle)
    if doc is None:
        return []
    return [{"name": n, "default": n == doc["default"], "settings": p["settings"], "measured": p.get("measured", {})}
            for n, p in sorted(doc["profiles"].items())]


def choose(result: Any, specs: list[Any]) -> dict[str, dict[str, Any]]:
    """Each requested profile from a search result: name -> {settings, measured, point, why}.

    goodput: the search's best point (ties already resolved by its noise rule). ttft_p99/tpot_p99:
    the lowest median latency among points whose mean goodput is at least `min_goodput_share` of
    the best's (the earlier point of the space on equal latency).
    """
    best = result.best
    if best is None:
        return {}
    measured = [p for p in result.points if p.error is None and p.trials]
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.goal == "goodput":
            pick, why = best, "highest goodput" + (" (tied within noise; the earlier point of the space)"
                                                   if result.tie else "")
        else:
            floor = spec.min_goodput_share * best.mean
            ok = [p for p in measured if p.mean >= floor]
            pick = min(ok, key=lambda p: (p.metric(spec.goal), p.index))
            why = f"lowest {spec.goal} among points with goodput >= {spec.min_goodput_share:.0%} of the best"
        out[spec.name] = {"settings": dict(pick.settings), "point": pick.index, "why": why,
                          "measured": {"goodput": pick.mean, "goodput_trials": pick.goodputs,
                                       **{k: pick.metric(k) for k in ("ttft_p99", "tpot_p99", "output_tok_s")}}}
    return out


def registry_tag(bundle: Bundle) -> str | None:
    """The profiles as a compact JSON registry tag (`trtbuild list` shows them): default, and per
    profile its settings and measured goodput and TTFT p99."""
    doc = read_profiles(bundle)
    if doc is None:
        return None
    rows = {n: {"settings": p["settings"], "goodput": _round(p.get("measured", {}).get("goodput")),
                "ttft_p99": _round(p.get("measured", {}).get("ttft_p99"))} for n, p in sorted(doc["profiles"].items())}
    return json.dumps({"default": doc["default"], "profiles": rows}, sort_keys=True, separators=(",", ":"))


def _round(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


def check_same_profile(version_config: str | None, model: str, version: int, bundle: Bundle,
                       options: Any) -> None:
    """Publishing a bundle that is already version N of the model: N must have been rendered with
    the profile asked for now. A version is immutable, so another profile of the same bundle is
    refused with the way out, rather than silently serving N's settings. `version_config`: N's own
    config text (pipeline/repository/render.py VERSION_CONFIG), None when it has none."""
    from pipeline.repository.pbtxt import parse_pbtxt

    if options is None or options.settings or version_config is None:
        return
    wanted, _ = resolve(bundle, getattr(options, "profile", None))
    params = parse_pbtxt(version_config).parameters
    have = params["profile"].string_value if "profile" in params else None
    if (have or None) != wanted:
        raise ProfileError(f"bundle {bundle.short_id} is already version {version} of {model}, served with "
                           f"profile {have or '(none)'}, not {wanted}; a version is immutable: publish it under "
                           "another model name, or remove the version (it is pruned once newer versions replace "
                           "it)")
