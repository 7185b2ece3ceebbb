"""fetch_ranged: parallel ranged parts written in place, the sha256 in order behind them."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pipeline.store import s3_ranged
from pipeline.store.base import ByteCounter
from pipeline.store.s3_ranged import fetch_ranged

PART = 64 << 10  # small parts: many of them, finishing out of order


class CutError(Exception):
    pass


class RangedS3:
    """head_object / ranged get_object over bytes, each part stream slowed by a random delay;
    `cut` maps a range start to the byte at which its first stream breaks."""

    def __init__(self, data: bytes, cut: dict[int, int] | None = None, missing: bool = False) -> None:
        self.data, self.cut, self.missing = data, dict(cut or {}), missing
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def head_object(self, **kw: Any) -> dict[str, Any]:
        return {"ETag": '"etag-1"', "ContentLength": len(self.data)}

    def get_object(self, **kw: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(kw)
        first, last = (int(x) for x in kw["Range"].removeprefix("bytes=").split("-"))
        if self.missing and first > 0:
            raise CutError("no such part")
        with self.lock:
            cut = self.cut.pop(first, None)
        data, end = self.data, last + 1

        class Body:
            def iter_chunks(self, size: int) -> Iterator[bytes]:
                time.sleep(random.random() * 0.01)  # shuffles the order parts complete in
                pos = first
                while pos < end:
                    if cut is not None and pos >= cut:
                        raise CutError("connection reset")
                    stop = min(end, pos + size, cut if cut is not None else end)
                    yield data[pos:stop]
                    pos = stop

        return {"Body": Body(), "ETag": '"etag-1"'}


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_ranged, "PART", PART)


def fetch(s3: RangedS3, path: Path, retryable: tuple[type[BaseException], ...] = (CutError,)) -> tuple[str, int]:
    progress = ByteCounter()
    with ThreadPoolExecutor(6) as pool:
        fut = fetch_ranged(s3, "b", "k", path, len(s3.data), pool=pool, progress=progress,
                           retryable=retryable, cancelled=threading.Event())
        return fut.result(timeout=30), progress.done


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_parts_out_of_order_give_the_file_and_its_sha256(tmp_path: Path) -> None:
    data = os.urandom(20 * PART + 777)
    s3 = RangedS3(data)
    digest, done = fetch(s3, tmp_path / "f")
    assert digest == hashlib.sha256(data).hexdigest() and done == len(data)
    assert (tmp_path / "f").read_bytes() == data
    assert len(s3.calls) == 21 and all(c["IfMatch"] == '"etag-1"' for c in s3.calls)


def test_a_cut_part_resumes_at_its_offset(tmp_path: Path) -> None:
    data = os.urandom(5 * PART)
    s3 = RangedS3(data, cut={2 * PART: 2 * PART + 1000})
    digest, done = fetch(s3, tmp_path / "f")
    assert digest == hashlib.sha256(data).hexdigest() and done == len(data)
    assert {"Bucket": "b", "Key": "k", "Range": f"bytes={2 * PART + 1000}-{3 * PART - 1}",
            "IfMatch": '"etag-1"'} in s3.calls


def test_a_failed_part_fails_the_file_and_closes_it(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(CutError, match="no such part"):
        fetch(RangedS3(os.urandom(8 * PART), missing=True), tmp_path / "f", retryable=())
    assert open_fds() == before
