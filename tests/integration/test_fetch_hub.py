"""Offline fetch from a cache laid out the way huggingface_hub lays it out (no mock server)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline.checkpoint.hub import fetch_repo
from pipeline.errors import FetchError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(cache: Path, repo: str, files: dict[str, bytes], ref: str = "main") -> None:
    """models--org--name/{blobs/<sha256>, refs/<ref>, snapshots/<commit>/<file> -> ../../blobs/<sha256>}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / ref).write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(Path("../../blobs") / blob.name)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_offline_fetch_from_cache(tmp_path: Path, offline: None) -> None:
    files = {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"]}).encode(),
             "model.safetensors": b"weights", "tokenizer.json": b"{}"}
    lay_out_cache(tmp_path, "org/model", files)
    got = fetch_repo("org/model", "main", cache_dir=tmp_path)
    assert got.commit == COMMIT
    assert (got.path / "model.safetensors").read_bytes() == b"weights"
    by_commit = fetch_repo("org/model", COMMIT, cache_dir=tmp_path)
    assert by_commit.path == got.path


def test_missing_revision_is_one_clear_line(tmp_path: Path, offline: None) -> None:
    lay_out_cache(tmp_path, "org/model", {"config.json": b"{}"})
    with pytest.raises(FetchError) as e:
        fetch_repo("org/model", "v2.0", cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("org/model revision v2.0 is not in ") and "HF_HUB_OFFLINE=1" in msg
