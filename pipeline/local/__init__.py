"""Local services for a laptop or CI: SeaweedFS (S3) and an MLflow server, on loopback."""

from pipeline.local.services import local_down, local_status, local_up

__all__ = ["local_down", "local_status", "local_up"]
