"""Hugging Face Hub checkpoints, pinned to a revision, weights/config/tokenizer only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import FetchError

ALLOW = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.tiktoken", "merges.txt", "vocab.txt",
         "*.jinja"]
IGNORE = ["*.bin", "*.pth", "*.pt", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "original/*", "onnx/*"]


@dataclass(frozen=True)
class FetchedCheckpoint:
    path: Path
    repo: str
    revision: str
    commit: str


def fetch_repo(repo: str, revision: str, *, cache_dir: Path | None = None,
               token: str | None = None) -> FetchedCheckpoint:
    """snapshot_download pinned to `revision`; offline (HF_HUB_OFFLINE=1) it reads the cache only."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = Path(snapshot_download(
            repo_id=repo, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW, ignore_patterns=IGNORE,
            token=token or os.environ.get("HF_TOKEN"), local_files_only=offline,
        ))
    except LocalEntryNotFoundError:
        where = cache_dir or os.environ.get("HF_HUB_CACHE") or "the HF cache"
        mode = "HF_HUB_OFFLINE=1" if offline else "the Hub is unreachable"
        raise FetchError(f"{repo} revision {revision} is not in {where} and {mode}; run once with network "
                         "or copy the snapshot into the cache") from None
    except RepositoryNotFoundError:
        raise FetchError(f"{repo}: repository not found or gated; check the name and set HF_TOKEN") from None
    except HfHubHTTPError as e:
        raise FetchError(f"{repo}@{revision}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None
    if not (path / "config.json").is_file():
        raise FetchError(f"{repo}@{revision}: snapshot at {path} has no config.json; not a transformers checkpoint")
    return FetchedCheckpoint(path=path, repo=repo, revision=revision, commit=path.name)
