"""The TensorRT and TensorRT-LLM versions of the environment a build runs in.

An engine loads only on the TensorRT and TensorRT-LLM versions it was built with, and a pytorch
bundle's options target one TensorRT-LLM line, so both versions go into the bundle's
compatibility key under the names `tensorrt` and `tensorrt_llm` (the names bundle.RuntimeFacts
and `trtbuild check --tensorrt/--tensorrt-llm` use). They must come from where the build runs,
not from trtbuild's own environment: `probe` is called through the stage executor
(`run_function(PROBE, {}, executor=...)`), so in a container it runs inside the container. This
module imports only the standard library, like the executor's worker.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

PROBE = "pipeline.backends.trtllm_versions:probe"

# compatibility key -> (distributions that install it, in order, module name)
PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    # the tensorrt meta-package; the CUDA-specific wheels when only those are installed
    "tensorrt": (("tensorrt", "tensorrt-cu13", "tensorrt-cu12"), "tensorrt"),
    "tensorrt_llm": (("tensorrt-llm",), "tensorrt_llm"),
}


def probe() -> dict[str, str | None]:
    """{"tensorrt": version or None, "tensorrt_llm": version or None} of this interpreter."""
    return {key: _version(dists, module) for key, (dists, module) in PACKAGES.items()}


def _version(dists: tuple[str, ...], module: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    # no installed distribution (a source tree on the path): ask the module itself
    if importlib.util.find_spec(module) is None:
        return None
    try:
        version = getattr(importlib.import_module(module), "__version__", None)
    except Exception:  # a module that does not import has no version to report
        return None
    return str(version) if version is not None else None
