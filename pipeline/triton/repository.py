"""Triton model repositories written from a bundle manifest, one version directory per bundle.

Every config.pbtxt is built as Triton's own ModelConfig protobuf (tritonclient ships
model_config_pb2) and printed in text format, so what we write always parses, and no `${...}`
placeholder can survive. Version directories are written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.bundle import Bundle
from pipeline.errors import TrtbuildError
from pipeline.triton import pbtxt
from pipeline.util import atomic
from pipeline.util.files import link_tree

MODEL_SHIM = '''"""Written by trtbuild: the reference backend's Triton python model."""
from pipeline.backends.reference.triton_model import TritonPythonModel  # noqa: F401
'''

# inputs and outputs with the names of TensorRT-LLM's inflight_batcher_llm ensemble
ENSEMBLE_INPUTS: list[tuple[str, str, list[int], bool]] = [
    ("text_input", "TYPE_STRING", [1], False),
    ("max_tokens", "TYPE_INT32", [1], True),
    ("temperature", "TYPE_FP32", [1], True),
    ("top_k", "TYPE_INT32", [1], True),
    ("top_p", "TYPE_FP32", [1], True),
    ("random_seed", "TYPE_UINT64", [1], True),
    ("end_id", "TYPE_INT32", [1], True),
    ("stop_words", "TYPE_STRING", [-1], True),
    ("stream", "TYPE_BOOL", [1], True),
    ("return_log_probs", "TYPE_BOOL", [1], True),
    ("ignore_eos", "TYPE_BOOL", [1], True),
]
REFERENCE_OUTPUTS: list[tuple[str, str, list[int]]] = [
    ("text_output", "TYPE_STRING", [-1]),
    ("output_token_count", "TYPE_INT32", [1]),
    ("output_log_probs", "TYPE_FP32", [-1]),
]


class RepositoryError(TrtbuildError):
    """A model repository is malformed or a version cannot be written."""


def render_config(config: dict[str, Any]) -> str:
    """dict (ModelConfig JSON field names) -> config.pbtxt text; refuses unknown fields and placeholders."""
    return pbtxt.render_pbtxt(config)


def parse_config(text: str) -> Any:
    return pbtxt.parse_pbtxt(text)


def reference_config(name: str, bundle: Bundle, *, versions: list[int], instances: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,  # the runtime batches concurrent requests itself
        "model_transaction_policy": {"decoupled": True},
        "input": [{"name": n, "data_type": t, "dims": d, "optional": o} for n, t, d, o in ENSEMBLE_INPUTS],
        "output": [{"name": n, "data_type": t, "dims": d} for n, t, d in REFERENCE_OUTPUTS],
        "instance_group": [{"count": instances, "kind": "KIND_CPU"}],
        "version_policy": {"specific": {"versions": versions}},
        "parameters": {"bundle_dir": {"string_value": "bundle"}, "bundle_id": {"string_value": bundle.id},
                       "recipe": {"string_value": str(bundle.manifest.get("name", ""))}},
    }


@dataclass
class ModelDir:
    """One model of a repository: its config and numbered version directories."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config_path(self) -> Path:
        return self.root / "config.pbtxt"

    def versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.name) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit())

    def version_dir(self, v: int) -> Path:
        return self.root / str(v)

    def served_versions(self) -> list[int]:
        """The versions the config's version_policy names."""
        if not self.config_path.is_file():
            return []
        cfg = parse_config(self.config_path.read_text())
        if cfg.version_policy.WhichOneof("policy_choice") == "specific":
            return sorted(cfg.version_policy.specific.versions)
        return self.versions()[-1:]

    def bundle_id(self, v: int) -> str | None:
        m = self.version_dir(v) / "bundle" / "manifest.json"
        if not m.is_file():
            return None
        from pipeline.util.hashing import sha256_file

        return sha256_file(m)

    def version_of(self, bundle_id: str) -> int | None:
        return next((v for v in self.versions() if self.bundle_id(v) == bundle_id), None)


def materialize_version(model: ModelDir, bundle: Bundle, version: int) -> Path:
    """Copy (hard-link when possible) the bundle into `<model>/<version>/` atomically."""
    final = model.version_dir(version)
    if final.exists():
        raise RepositoryError(f"{final} already exists; versions are immutable")
    model.root.mkdir(parents=True, exist_ok=True)
    tmp = model.root / f".tmp-{version}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        link_tree(bundle.dir, tmp / "bundle")  # bundles are immutable: hard links are safe
        if bundle.backend == "reference":
            (tmp / "model.py").write_text(MODEL_SHIM)
        else:
            raise RepositoryError(f"publishing a '{bundle.backend}' bundle into Triton is not wired yet")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_config(model: ModelDir, config: dict[str, Any]) -> bytes:
    """Write config.pbtxt atomically; returns the previous bytes (b'' if none) for a rollback."""
    previous = model.config_path.read_bytes() if model.config_path.is_file() else b""
    atomic.write_text(model.config_path, render_config(config))
    return previous


def restore_config(model: ModelDir, previous: bytes) -> None:
    if previous:
        atomic.write_bytes(model.config_path, previous)
    else:
        model.config_path.unlink(missing_ok=True)


def prune(model: ModelDir, keep: int, protect: list[int]) -> list[int]:
    """Remove the oldest versions beyond `keep`, never one in `protect`."""
    removed = []
    versions = model.versions()
    for v in versions[: max(0, len(versions) - keep)]:
        if v in protect:
            continue
        shutil.rmtree(model.version_dir(v))
        removed.append(v)
    return removed


def describe(model: ModelDir) -> dict[str, Any]:
    return {"model": model.name, "versions": {v: model.bundle_id(v) for v in model.versions()},
            "served": model.served_versions()}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
