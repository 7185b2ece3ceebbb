"""Bundles: what a build produces and everything downstream handles.

A bundle is a directory with `manifest.json` at its root listing every other file with its size
and sha256, the provenance and the compatibility key. The bundle id is the sha256 of the
manifest bytes; manifests are written canonically and last. Loading a bundle verifies it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import CompatibilityError, IntegrityError
from pipeline.recipe.hardware import GPUS, sm_label
from pipeline.store.base import parse_manifest
from pipeline.util import atomic
from pipeline.util.hashing import canonical_json, file_entries, iter_content_files, sha256_bytes, sha256_file

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
KIND = "trtbuild.bundle"


@dataclass(frozen=True)
class Bundle:
    dir: Path
    id: str
    manifest: dict[str, Any]

    @property
    def backend(self) -> str:
        return str(self.manifest["backend"])

    @property
    def compatibility(self) -> dict[str, Any]:
        return dict(self.manifest["compatibility"])

    @property
    def short_id(self) -> str:
        return self.id[:12]


def write_manifest(bundle_dir: Path, *, name: str, backend: str, provenance: dict[str, Any],
                   compatibility: dict[str, Any], runtime: dict[str, Any]) -> str:
    """List every file of `bundle_dir`, write manifest.json last (atomically), return the id.

    Nothing time-dependent goes in: the same content and provenance give the same id.
    """
    (bundle_dir / MANIFEST).unlink(missing_ok=True)
    manifest = {
        "schema_version": MANIFEST_SCHEMA,
        "kind": KIND,
        "name": name,
        "backend": backend,
        "files": file_entries(bundle_dir),
        "provenance": provenance,
        "compatibility": compatibility,
        "runtime": runtime,
    }
    data = canonical_json(manifest)
    atomic.write_bytes(bundle_dir / MANIFEST, data)
    return sha256_bytes(data)


def read_manifest(bundle_dir: Path) -> tuple[dict[str, Any], str]:
    path = bundle_dir / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{bundle_dir}: no {MANIFEST}; not a bundle (or an unfinished one)") from None
    try:
        manifest = json.loads(data)
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if manifest.get("kind") != KIND:
        raise IntegrityError(f"{path}: not a trtbuild bundle manifest")
    if manifest.get("schema_version") != MANIFEST_SCHEMA:
        raise IntegrityError(f"{path}: manifest schema_version {manifest.get('schema_version')} is not "
                             f"supported (this trtbuild reads {MANIFEST_SCHEMA}); upgrade trtbuild")
    # the store's rule for the file list (paths inside the bundle, sizes, digests): one rule,
    # whether the bundle came from a build, a store or someone's hand
    parse_manifest(data, str(path))
    return manifest, sha256_bytes(data)


def load_bundle(bundle_dir: Path, *, verify: bool = True, expect_id: str | None = None) -> Bundle:
    """Read a bundle; with `verify`, every file's size and sha256 must match and nothing extra exists."""
    manifest, bid = read_manifest(bundle_dir)
    if expect_id is not None and bid != expect_id:
        raise IntegrityError(f"{bundle_dir}/{MANIFEST}: bundle id {bid[:12]} is not the expected {expect_id[:12]}")
    if verify:
        verify_files(bundle_dir, manifest)
    return Bundle(bundle_dir, bid, manifest)


def verify_files(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    listed = {f["path"]: f for f in manifest["files"]}
    for rel, entry in listed.items():
        p = bundle_dir / rel
        if not p.is_file():
            raise IntegrityError(f"{bundle_dir}: {rel} is missing (listed in {MANIFEST})")
        if p.stat().st_size != entry["size"]:
            raise IntegrityError(f"{bundle_dir}: {rel} has {p.stat().st_size} bytes, manifest says {entry['size']}")
        if sha256_file(p) != entry["sha256"]:
            raise IntegrityError(f"{bundle_dir}: {rel} does not match its sha256 in {MANIFEST} "
                                 "(changed or corrupted); rebuild or fetch the bundle again")
    for p in iter_content_files(bundle_dir):
        rel = p.relative_to(bundle_dir).as_posix()
        if rel != MANIFEST and rel not in listed:
            raise IntegrityError(f"{bundle_dir}: {rel} is not listed in {MANIFEST}; a bundle is immutable")


# --------------------------------------------------------------------------- compatibility
@dataclass(frozen=True)
class RuntimeFacts:
    """What a runtime offers: from the driver and installed packages, or from a named target."""

    gpu: str
    sm: int | None
    tensorrt: str | None = None
    tensorrt_llm: str | None = None
    gpus: int = 1
    tensor_parallel: int | None = None  # what the deployment asks for, when it says
    pipeline_parallel: int | None = None
    source: str = "target"  # "target" (named) or "detected"


def facts_for_target(gpu: str, *, gpus: int | None = None, tensorrt: str | None = None,
                     tensorrt_llm: str | None = None, tensor_parallel: int | None = None,
                     pipeline_parallel: int | None = None) -> RuntimeFacts:
    if gpu not in GPUS:
        raise CompatibilityError(f"unknown target '{gpu}'; known: {', '.join(GPUS)}")
    world = (tensor_parallel or 1) * (pipeline_parallel or 1)
    return RuntimeFacts(gpu=gpu, sm=GPUS[gpu].sm, tensorrt=tensorrt, tensorrt_llm=tensorrt_llm,
                        gpus=gpus if gpus is not None else max(world, 8 if GPUS[gpu].sm else 1),
                        tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel)


def detect_runtime() -> RuntimeFacts | None:
    """On a GPU host: the GPU's compute capability from torch/NVML and installed TRT versions.

    The versions are read as the build stage reads them for the bundle (backends.trtllm_versions).
    """
    from pipeline.backends.trtllm_versions import probe

    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0).lower()
    except Exception:
        return None

    sm = major * 10 + minor
    gpu = next((g for g in GPUS if g != "cpu" and g in name.replace(" ", "")), f"sm{sm}")
    versions = probe()
    return RuntimeFacts(gpu=gpu, sm=sm, tensorrt=versions["tensorrt"], tensorrt_llm=versions["tensorrt_llm"],
                        gpus=count, source="detected")


def _minor(v: str | None) -> str | None:
    return None if v is None else ".".join(v.split(".")[:2])


def compatibility_problems(compat: dict[str, Any], facts: RuntimeFacts) -> list[str]:
    """Why a bundle cannot run on a runtime; empty when it can. Each reason names the fix."""
    out: list[str] = []
    backend = compat.get("backend")
    want_sm = compat.get("sm")
    if backend == "reference":
        if facts.sm is not None:
            out.append(f"bundle is a CPU reference bundle, runtime is {facts.gpu} ({sm_label(facts.sm)}); "
                       "build the recipe for that GPU with backend tensorrt or pytorch")
        return out
    if facts.sm is None:
        out.append(f"bundle was built for {compat.get('gpu')} ({sm_label(want_sm)}), runtime has no NVIDIA GPU; "
                   "serve it on a GPU host or build the cpu recipe")
        return out
    if backend == "tensorrt" and want_sm != facts.sm:
        out.append(f"engine was built for {sm_label(want_sm)} ({compat.get('gpu')}), runtime GPU is "
                   f"{sm_label(facts.sm)} ({facts.gpu}); TensorRT engines run only on the architecture they "
                   f"were built for: rebuild with target.gpu: {facts.gpu}")
    elif backend == "pytorch" and want_sm is not None and facts.sm < want_sm:
        out.append(f"bundle needs {sm_label(want_sm)}+ ({compat.get('quant_algo')}), runtime GPU is "
                   f"{sm_label(facts.sm)}; rebuild for target.gpu: {facts.gpu}")
    if backend == "tensorrt":
        for key, label in (("tensorrt", "TensorRT"), ("tensorrt_llm", "TensorRT-LLM")):
            want, have = compat.get(key), getattr(facts, key)
            if want and have and want != have:
                out.append(f"engine was built with {label} {want}, runtime has {label} {have}; engines do not "
                           f"load across versions: rebuild in the runtime's container or deploy {label} {want}")
    elif backend == "pytorch":
        want, have = compat.get("tensorrt_llm"), facts.tensorrt_llm
        if want and have and _minor(want) != _minor(have):
            out.append(f"bundle options target TensorRT-LLM {want}, runtime has {have}; rebuild or pin {want}")
    for key, label in (("tensor_parallel", "TP"), ("pipeline_parallel", "PP")):
        want, have = compat.get(key), getattr(facts, key)
        if have is not None and want is not None and int(want) != have:
            out.append(f"bundle was built for {label} {want}, deployment asks {label} {have}; TP/PP are fixed "
                       f"when the checkpoint is converted: rebuild with target.{key}: {have}")
    world = int(compat.get("tensor_parallel", 1)) * int(compat.get("pipeline_parallel", 1))
    if world > facts.gpus:
        out.append(f"bundle needs {world} GPUs (TP {compat.get('tensor_parallel')} x PP "
                   f"{compat.get('pipeline_parallel')}), runtime has {facts.gpus}; deploy on a host with "
                   f"{world} GPUs or rebuild with a smaller tensor_parallel")
    return out


def check_compatible(bundle: Bundle, facts: RuntimeFacts) -> None:
    problems = compatibility_problems(bundle.compatibility, facts)
    if problems:
        raise CompatibilityError(f"bundle {bundle.short_id} cannot run here: " + "; ".join(problems))
