"""Triton model repositories written from a bundle manifest, one version directory per bundle.

Every config.pbtxt is built as Triton's own ModelConfig protobuf (tritonclient ships
model_config_pb2) and printed in text format, so what we write always parses, and no `${...}`
placeholder can survive. Version directories are written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.bundle import Bundle
from pipeline.errors import TrtbuildError
from pipeline.triton import pbtxt
from pipeline.triton.render import BUNDLE_DIR, VERSION_CONFIG, ServingOptions, render_version
from pipeline.util import atomic
from pipeline.util.files import link_tree

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
        m = self.version_dir(v) / BUNDLE_DIR / "manifest.json"
        if not m.is_file():
            return None
        from pipeline.util.hashing import sha256_file

        return sha256_file(m)

    def version_of(self, bundle_id: str) -> int | None:
        return next((v for v in self.versions() if self.bundle_id(v) == bundle_id), None)


def materialize_version(model: ModelDir, bundle: Bundle, version: int, *, server_repository: str | None = None,
                        options: ServingOptions | None = None) -> Path:
    """Write version `version` of `model`: the bundle (hard-linked when possible), the rendered
    files, this version's config (VERSION_CONFIG) and, for an ensemble, its composing models.

    Every directory is written under a temporary name and renamed; the main version directory is
    renamed last, so a version exists only once everything it routes through exists. Nothing is
    left behind on failure. `server_repository` is the repository's path as the server sees it
    (default: this one's absolute path); rendered configs and model.yaml hold absolute paths.
    """
    final = model.version_dir(version)
    if final.exists():
        raise RepositoryError(f"{final} already exists; versions are immutable")
    repo = model.root.parent
    served_root = (server_repository or str(repo.resolve())).rstrip("/")
    rendered = render_version(model.name, bundle, version, version_dir=f"{served_root}/{model.name}/{version}",
                              options=options)
    for m in rendered.all():  # before anything is written
        pbtxt.check_no_placeholders(m.config)
        for rel, text in m.files.items():
            found = pbtxt.find_placeholders(text)
            if found:
                raise pbtxt.ModelConfigError(f"{m.name}/{version}/{rel}: unresolved template placeholders: "
                                             + "; ".join(found))
    created: list[Path] = []
    try:
        for m in rendered.composing:
            target = repo / m.name
            if target.exists():
                raise RepositoryError(f"{target} already exists; composing models of a version are immutable "
                                      "(left over from an interrupted publish? remove it)")
            with atomic.staged_dir(target) as tmp:
                _write_version_files(tmp / str(version), m.files)
                (tmp / "config.pbtxt").write_text(render_config(m.config))
            created.append(target)
        model.root.mkdir(parents=True, exist_ok=True)
        with atomic.staged_dir(final) as tmp:
            link_tree(bundle.dir, tmp / BUNDLE_DIR)  # bundles are immutable: hard links are safe
            _write_version_files(tmp, rendered.main.files)
            (tmp / VERSION_CONFIG).write_text(render_config(rendered.main.config))
    except BaseException:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return final


def _write_version_files(vdir: Path, files: dict[str, str]) -> None:
    vdir.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = vdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def version_config_text(model: ModelDir, version: int) -> str | None:
    """The config.pbtxt that serves exactly `version` (its own rendered config, policy = [version]);
    None for a version written before configs were kept per version."""
    path = model.version_dir(version) / VERSION_CONFIG
    if not path.is_file():
        return None
    return pbtxt.with_version_policy(path.read_text(), specific=[version])


def composing_models(config_text: str) -> list[str]:
    """Names of the models an ensemble config routes through (empty for any other model)."""
    cfg = parse_config(config_text)
    return [step.model_name for step in cfg.ensemble_scheduling.step]


def install_config(model: ModelDir, version: int) -> None:
    """Make config.pbtxt serve `version` (no server involved)."""
    text = version_config_text(model, version)
    if text is None:
        text = pbtxt.with_version_policy(model.config_path.read_text(), specific=[version])
    atomic.write_text(model.config_path, text)


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


def version_composing(model: ModelDir, version: int) -> list[str]:
    own = model.version_dir(version) / VERSION_CONFIG
    return composing_models(own.read_text()) if own.is_file() else []


def remove_version(model: ModelDir, version: int) -> None:
    """Delete a version directory and the composing models it routes through."""
    composing = version_composing(model, version)
    shutil.rmtree(model.version_dir(version), ignore_errors=True)  # first: the version is gone, then its parts
    for name in composing:
        shutil.rmtree(model.root.parent / name, ignore_errors=True)


def prune(model: ModelDir, keep: int, protect: list[int]) -> list[int]:
    """Remove the oldest versions beyond `keep`, never one in `protect`, with their composing models."""
    removed = []
    versions = model.versions()
    for v in versions[: max(0, len(versions) - keep)]:
        if v in protect:
            continue
        remove_version(model, v)
        removed.append(v)
    return removed


def top_level_models(repository: Path) -> list[str]:
    """Models to load when a server starts: every model with a config.pbtxt except the composing
    models of some version (those load with their ensemble, and only the served version's)."""
    if not repository.is_dir():
        return []
    models = [p for p in sorted(repository.iterdir()) if (p / "config.pbtxt").is_file()]
    composing = {name for m in models for v in ModelDir(m).versions()
                 for name in version_composing(ModelDir(m), v)}
    return [m.name for m in models if m.name not in composing]


def describe(model: ModelDir) -> dict[str, Any]:
    return {"model": model.name, "versions": {v: model.bundle_id(v) for v in model.versions()},
            "served": model.served_versions()}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
