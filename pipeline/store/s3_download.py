"""Verified S3 download of a file of up to one part: one GET streamed into the file and its sha256.

s3transfer's download writes a file and says nothing of its content, so a verified download had
to read the whole file back to hash it (0.79x of boto3's unverified download at 1 GiB). Here the
bytes are hashed in the 512 KiB blocks they arrive in, while they are still in cache (256-512 KiB
blocks cost least: 0.95 client CPU s/GB hash included, 2.0-2.2 with 2-8 MiB blocks, which are
fresh allocations each time). Larger files go in ranged parts (s3_ranged.py): one stream per file
cost less CPU but a local SeaweedFS serves a single stream too slowly (0.65x of boto3 at 1 GiB).

A stream cut mid-file resumes where it stopped (Range, If-Match on the first response's ETag, so
a file cannot be stitched from two versions of an object) and the hash goes on from there.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

from pipeline.store.base import TransferProgress

BLOCK = 512 << 10
ATTEMPTS = 3  # botocore retries a failed request; a body cut mid-read is resumed here


class DownloadCancelledError(Exception):
    """The download was stopped from outside (another file failed, or the caller gave up)."""


def fetch_hashed(client: Any, bucket: str, key: str, path: Path, *, progress: TransferProgress,
                 retryable: tuple[type[BaseException], ...], cancelled: threading.Event) -> str:
    """Stream s3://bucket/key into `path`, hashing each block on the way; the hex sha256."""
    if cancelled.is_set():
        raise DownloadCancelledError(key)
    sha = hashlib.sha256()
    done = 0
    etag: str | None = None
    with path.open("wb") as out:
        for attempt in range(ATTEMPTS):
            extra: dict[str, str] = {"Range": f"bytes={done}-", "IfMatch": etag} if etag and done else {}
            resp = client.get_object(Bucket=bucket, Key=key, **extra)
            etag = etag or resp.get("ETag")
            try:
                for block in resp["Body"].iter_chunks(BLOCK):
                    if cancelled.is_set():
                        raise DownloadCancelledError(key)
                    out.write(block)
                    sha.update(block)
                    done += len(block)
                    progress.advance(len(block))
                return sha.hexdigest()
            except retryable:
                if attempt == ATTEMPTS - 1 or not etag:
                    raise
    raise AssertionError("unreachable")  # pragma: no cover
