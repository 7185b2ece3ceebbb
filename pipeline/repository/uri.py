"""Which model repository a URI names: a directory path (or file://DIR) or s3://bucket/prefix.

Apart from base.py so that the interface does not import its implementations.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.repository.base import ModelRepository, RepositoryError
from pipeline.repository.local import DirectoryRepository
from pipeline.repository.s3 import S3Repository


def open_repository(uri: str | Path | ModelRepository) -> ModelRepository:
    """A directory path (or file://path) or s3://bucket/prefix -> its repository."""
    if isinstance(uri, ModelRepository):
        return uri
    text = str(uri)
    if text.startswith("s3://"):
        return S3Repository(text)
    if "://" in text and not text.startswith("file://"):
        raise RepositoryError(f"model repository '{text}': unknown scheme; use a directory path, file://DIR "
                              "or s3://bucket/prefix")
    return DirectoryRepository(Path(text.removeprefix("file://")))
