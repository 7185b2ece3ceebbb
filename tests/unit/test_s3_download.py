"""fetch_hashed: one pass into the file and the hash; a cut stream resumes at its offset."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.store.base import ByteCounter
from pipeline.store.s3_download import DownloadCancelledError, fetch_hashed


class CutError(Exception):
    pass


class FakeS3:
    """get_object over bytes; the first stream breaks after `cut_at` bytes."""

    def __init__(self, data: bytes, cut_at: int | None = None) -> None:
        self.data, self.cut_at = data, cut_at
        self.calls: list[dict[str, Any]] = []

    def get_object(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        start = int(kw["Range"].removeprefix("bytes=").rstrip("-")) if "Range" in kw else 0
        cut = self.cut_at if len(self.calls) == 1 else None
        data = self.data

        class Body:
            def iter_chunks(self, size: int) -> Iterator[bytes]:
                pos = start
                while pos < len(data):
                    if cut is not None and pos >= cut:
                        raise CutError("connection reset")
                    end = min(len(data), pos + size, cut if cut is not None else len(data))
                    yield data[pos:end]
                    pos = end

        return {"Body": Body(), "ETag": '"etag-1"'}


def test_cut_stream_resumes_with_range_and_if_match(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 123)
    s3 = FakeS3(data, cut_at=1_500_000)
    progress = ByteCounter()
    digest = fetch_hashed(s3, "b", "k", tmp_path / "f", progress=progress, retryable=(CutError,),
                          cancelled=threading.Event())
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f").read_bytes() == data
    assert progress.done == len(data)
    assert s3.calls[1] == {"Bucket": "b", "Key": "k", "Range": "bytes=1500000-", "IfMatch": '"etag-1"'}


def test_cancelled_stops_between_blocks(tmp_path: Path) -> None:
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(DownloadCancelledError):
        fetch_hashed(FakeS3(os.urandom(1 << 20)), "b", "k", tmp_path / "f", progress=ByteCounter(),
                     retryable=(CutError,), cancelled=cancelled)
