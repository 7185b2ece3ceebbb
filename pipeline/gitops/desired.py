"""Desired state: `deploy/<env>.yaml` says which bundle each Triton model of an environment serves.

    environment: production
    registry: ${MLFLOW_TRACKING_URI:-sqlite:///artifacts/mlflow.db}
    repository: ${TRTBUILD_TRITON_REPO:-triton_repo}     # a local path or s3://bucket/prefix
    models:
      smollm2:                                           # the Triton model name
        registered_model: smollm2-135m-cpu               # the MLflow registered model
        version: 3                                       # or alias: production, or digest: sha256:...

Strict like a recipe: unknown keys are errors, every problem is `FILE:LINE: field: message`,
`${VAR}` reads the environment (endpoints and credentials never live in the file). A `version`
or `digest` pins a bundle, so a git revert of the file is a rollback; an `alias` follows the
registry, so the file does not change when the alias moves (sync still reconciles to it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.errors import RecipeError
from pipeline.names import ModelName, name_problem
from pipeline.recipe.schema import NAME_RE, GpuName, Positive, Strict

DIGEST_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")


class ModelState(Strict):
    """One Triton model and the bundle it must serve: exactly one of version, alias, digest."""

    registered_model: ModelName | None = Field(
        None, description="MLflow registered model the version or alias belongs to (the recipe's "
                          "release.model_name). Needed with version and alias; with digest only when "
                          "no store is given.")
    version: Positive | None = Field(None, description="Registered model version (a pin: revert = rollback).")
    alias: str | None = Field(None, description="Registered model alias to follow, e.g. production.")
    digest: str | None = Field(None, description="Bundle digest, sha256:<64 hex> (a pin).")
    keep_versions: Positive = Field(3, description="Version directories kept in the repository.")
    instances: Positive = Field(1, description="Triton model instances (first publish of the model).")
    profile: str | None = Field(None, description="Serving profile of the bundle (its tune stage's, e.g. "
                                "throughput or latency; `trtbuild list` shows them). Default: the bundle's default.")
    switch: Literal["side-by-side", "drain", "rolling"] = Field(
        "side-by-side", description="How a new version replaces the serving one: side-by-side (no downtime; two "
        "versions must fit on the GPUs), drain (unload first; downtime = load time), rolling (write the "
        "repository only; replicas restart into it). `trtbuild plan RECIPE --explain` says which a model needs.")

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = DIGEST_RE.match(v)
        if m is None:
            raise ValueError(f"'{v}' is not a bundle digest; write sha256:<64 lowercase hex> "
                             "(`trtbuild list MODEL` shows them)")
        return m.group(1)

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[\w\-]+", v):
            raise ValueError(f"alias '{v}' may only contain letters, digits, '_' and '-'")
        return v

    @model_validator(mode="after")
    def _one_selector(self) -> ModelState:
        given = [k for k in ("version", "alias", "digest") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of version, alias or digest "
                             f"({'none given' if not given else ', '.join(given) + ' given'})")
        if given[0] in ("version", "alias") and not self.registered_model:
            raise ValueError(f"{given[0]} needs registered_model (the MLflow model it belongs to)")
        return self

    @property
    def selector(self) -> str:
        if self.version is not None:
            return f"version {self.version}"
        if self.alias is not None:
            return f"alias '{self.alias}'"
        return f"digest {str(self.digest)[:12]}"


class DesiredState(Strict):
    format: Literal[1] = Field(1, description="Desired-state format version.")
    environment: str = Field(pattern=NAME_RE, description="Name of the environment (production, staging).")
    registry: str | None = Field(
        None, description="MLflow tracking URI (sqlite:///path or http(s)://); needed for version and alias.")
    store: str | None = Field(
        None, description="Bundle store root (s3://bucket/prefix or file://dir). Default: where the "
                          "registry says the version is stored.")
    repository: str = Field(description="Triton model repository: a local directory or s3://bucket/prefix.")
    server_url: str | None = Field(
        None, description="Triton HTTP URL to switch live (explicit model control); empty: files only.")
    target: GpuName | None = Field(
        None, description="Runtime the bundles must fit (default: this host's GPU, or cpu).")
    models: dict[str, ModelState] = Field(description="Triton model name -> the bundle it serves.")

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelState]) -> dict[str, ModelState]:
        if not v:
            raise ValueError("no models; list at least one Triton model and its bundle")
        for name in v:
            problem = name_problem(name)
            if problem is not None:
                raise ValueError(f"model key {problem}")
        return v

    @field_validator("server_url", "registry", "store")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None  # `${VAR:-}` left empty means: not given

    @model_validator(mode="after")
    def _needs_registry(self) -> DesiredState:
        for name, m in self.models.items():
            if m.digest is None and self.registry is None:
                raise ValueError(f"models.{name} names a {m.selector.split()[0]}: set registry "
                                 "(an MLflow URI) to resolve it")
            if m.digest is not None and self.registry is None and self.store is None:
                raise ValueError(f"models.{name} names a digest: set store (or registry) to fetch it from")
        return self


def load_desired(path: str | Path) -> DesiredState:
    """Load and validate a desired-state file. Raises RecipeError listing every problem."""
    from pipeline.recipe.load import load_yaml_model

    p = Path(path)
    if p.is_file() and not p.read_text(errors="replace").strip():
        raise RecipeError([f"{path}:1: empty desired-state file; see deploy/production.yaml for an example"])
    state, _ = load_yaml_model(p, DesiredState)
    return state
