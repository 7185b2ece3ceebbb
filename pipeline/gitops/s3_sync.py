"""sync into an s3:// model repository (placeholder until wired)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import GitOpsError


def sync_s3(state: Any, *, dry_run: bool, server_url: str | None, cache: Path, load_timeout: float) -> Any:
    raise GitOpsError(f"{state.repository}: sync into an s3:// model repository is not wired yet; "
                      "use a local repository path")
