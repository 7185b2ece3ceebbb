"""Put an S3 object whose Last-Modified is later, in whole seconds, than every object beside it.

Why: Triton (core r24.10, the tritonserver 2.51 of nvidia-pytriton 0.7.0) reloads a model from
an S3 repository only if the newest Last-Modified under the model's directory is strictly
greater than it was at the model's previous load (ModelTimestamp::IsModified in
src/model_repository_manager/model_repository_manager.cc; S3FileSystem::FileModificationTime in
src/filesystem/implementations/s3.h takes HeadObject's LastModified). S3 gives Last-Modified in
whole seconds (an HTTP date), so a config.pbtxt rewritten within the same second as the newest
object Triton saw at its previous load looks unmodified: the load request returns 200 at once
and Triton keeps serving what it served. A switch straight after a load or another switch, or
the restore after a failed smoke check, could be ignored that way.

put_newer writes the object, reads its Last-Modified back, and if that is not later than the
newest Last-Modified under `prefix` before the write, waits for the next second and writes it
again. The comparison uses the server's own clock on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pipeline.errors import ServiceError

MAX_WAIT_S = 5.0  # two seconds is the most one server's whole-second clock can need


def newest_modified(client: Any, bucket: str, prefix: str) -> datetime | None:
    """The latest Last-Modified of the objects under `prefix` (None when there are none)."""
    newest: datetime | None = None
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            lm = obj["LastModified"]
            if newest is None or lm > newest:
                newest = lm
    return newest


def put_newer(client: Any, bucket: str, key: str, data: bytes, *, prefix: str,
              sleep: Callable[[float], None] = time.sleep, max_wait: float = MAX_WAIT_S) -> datetime:
    """Put `data` at `key` so that its Last-Modified is later than any object's under `prefix`
    before the call (`key`'s old version included); returns the new Last-Modified.

    Raises ServiceError if the server's Last-Modified does not move on within `max_wait`
    seconds (a server that reports a fixed time).
    """
    before = newest_modified(client, bucket, prefix)
    deadline = time.monotonic() + max_wait
    while True:
        client.put_object(Bucket=bucket, Key=key, Body=data)
        now = client.head_object(Bucket=bucket, Key=key)["LastModified"]
        if before is None or _whole(now) > _whole(before):
            return now
        if time.monotonic() >= deadline:
            raise ServiceError(f"s3://{bucket}/{key}: Last-Modified stayed at {now.isoformat()} for "
                               f"{max_wait:g}s, not later than {before.isoformat()}")
        # into the next whole second of this host's clock, plus a margin for the server's
        sleep(1.0 - time.time() % 1.0 + 0.05)


def _whole(t: datetime) -> int:
    return int(t.timestamp())  # Triton compares milliseconds, which S3 always gives as zero
