"""The registry: MLflow runs and registered bundle versions, aliases, promote and rollback."""

from pipeline.registry.mlflow_registry import (
    CANDIDATE,
    PRODUCTION,
    MlflowRegistry,
    RunContext,
    flatten_params,
    is_secret_key,
    open_registry,
    redact_params,
)

__all__ = [
    "CANDIDATE",
    "PRODUCTION",
    "MlflowRegistry",
    "RunContext",
    "flatten_params",
    "is_secret_key",
    "open_registry",
    "redact_params",
]
