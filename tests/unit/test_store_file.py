"""The file:// bundle store: same semantics as S3 (layout, manifest last, resume, verification)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.errors import IntegrityError, StoreError
from pipeline.store import ByteCounter, open_store, register_scheme
from pipeline.store import base as store_base
from pipeline.store.base import BundleStore
from pipeline.store.file import FileBundleStore
from pipeline.util.hashing import canonical_json, sha256_bytes
from tests.integration.services_fixtures import make_bundle

FILES = {
    "config.json": b'{"a": 1}',
    "weights/rank0.safetensors": os.urandom(300_000),
    "weights/rank1.safetensors": os.urandom(200_000),
    "tokenizer/tokenizer.json": b"{}",
    "empty.txt": b"",
}


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, str]:
    d = tmp_path / "bundle"
    return d, make_bundle(d, FILES)


@pytest.fixture
def store(tmp_path: Path) -> FileBundleStore:
    s = open_store(f"file://{tmp_path / 'store'}")
    assert isinstance(s, FileBundleStore)
    return s


def test_put_then_get_roundtrip(
    store: FileBundleStore, bundle: tuple[Path, str], tmp_path: Path
) -> None:
    src, bid = bundle
    progress = ByteCounter()
    stored = store.put(src, progress=progress)
    assert stored.bundle_id == bid
    assert stored.uri == f"{store.uri}/bundles/{bid}" == store.uri_for(bid)
    assert stored.uploaded_files == len(FILES) and stored.skipped_files == 0
    assert (
        stored.uploaded_bytes
        == sum(len(v) for v in FILES.values())
        == progress.done
        == progress.total
    )
    assert not stored.already_stored
    layout = store.root / "bundles" / bid
    assert (layout / "manifest.json").read_bytes() == (src / "manifest.json").read_bytes()
    assert (layout / "files" / "weights" / "rank0.safetensors").read_bytes() == FILES[
        "weights/rank0.safetensors"
    ]
    assert store.exists(bid) and store.list() == [bid]

    got = store.get(bid, tmp_path / "out", progress=ByteCounter())
    assert got == tmp_path / "out"
    for rel, data in FILES.items():
        assert (got / rel).read_bytes() == data
    assert (got / "manifest.json").read_bytes() == (src / "manifest.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_same_digest_twice_is_a_noop(store: FileBundleStore, bundle: tuple[Path, str]) -> None:
    src, bid = bundle
    store.put(src)
    manifest = store.root / "bundles" / bid / "manifest.json"
    before = manifest.stat().st_mtime_ns
    again = store.put(src)
    assert again.already_stored and again.uploaded_bytes == 0 and again.skipped_files == len(FILES)
    assert manifest.stat().st_mtime_ns == before


def test_interrupted_put_resumes_only_missing_files(
    store: FileBundleStore, bundle: tuple[Path, str]
) -> None:
    src, bid = bundle
    store.put(src)
    layout = store.root / "bundles" / bid
    # What an interrupted put leaves: some files, no manifest (so the bundle does not exist).
    (layout / "manifest.json").unlink()
    (layout / "files" / "weights" / "rank1.safetensors").unlink()
    corrupt = layout / "files" / "config.json"
    corrupt.chmod(0o644)
    corrupt.write_bytes(b'{"a": 2}')  # same size, different content: must go up again
    assert not store.exists(bid) and store.list() == []

    stored = store.put(src)
    assert stored.uploaded_files == 2 and stored.skipped_files == len(FILES) - 2
    assert stored.uploaded_bytes == len(FILES["weights/rank1.safetensors"]) + len(
        FILES["config.json"]
    )
    assert store.exists(bid)


def test_get_refuses_a_corrupted_file(
    store: FileBundleStore, bundle: tuple[Path, str], tmp_path: Path
) -> None:
    src, bid = bundle
    store.put(src)
    obj = store.root / "bundles" / bid / "files" / "weights" / "rank0.safetensors"
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[1234] ^= 0x01
    obj.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"weights/rank0\.safetensors") as exc:
        store.get(bid, tmp_path / "out")
    assert store.object_uri(bid, "weights/rank0.safetensors") in str(exc.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_get_refuses_a_manifest_that_is_not_its_id(
    store: FileBundleStore, bundle: tuple[Path, str], tmp_path: Path
) -> None:
    src, bid = bundle
    store.put(src)
    mf = store.root / "bundles" / bid / "manifest.json"
    mf.chmod(0o644)
    mf.write_bytes(mf.read_bytes() + b" ")
    with pytest.raises(IntegrityError, match="not the bundle id"):
        store.get(bid, tmp_path / "out")


def test_put_verifies_local_files_first(store: FileBundleStore, bundle: tuple[Path, str]) -> None:
    src, bid = bundle
    (src / "config.json").write_bytes(b'{"a": 3}')
    with pytest.raises(IntegrityError, match=r"config\.json does not match"):
        store.put(src)
    assert not store.exists(bid)


def test_put_refuses_unlisted_files(store: FileBundleStore, bundle: tuple[Path, str]) -> None:
    src, _ = bundle
    (src / "stray.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"stray\.bin is not listed"):
        store.put(src)


def test_put_refuses_a_directory_without_manifest(store: FileBundleStore, tmp_path: Path) -> None:
    (tmp_path / "nb").mkdir()
    with pytest.raises(StoreError, match=r"no manifest\.json"):
        store.put(tmp_path / "nb")


def test_manifest_paths_must_stay_inside_the_bundle(store: FileBundleStore, tmp_path: Path) -> None:
    d = tmp_path / "evil"
    d.mkdir()
    manifest = {
        "schema_version": 1,
        "kind": "trtbuild.bundle",
        "name": "x",
        "backend": "reference",
        "files": [{"path": "../escape", "size": 1, "sha256": "0" * 64}],
    }
    (d / "manifest.json").write_bytes(canonical_json(manifest))
    with pytest.raises(IntegrityError, match="not a plain relative path"):
        store.put(d)


def test_get_of_unknown_bundle(store: FileBundleStore, tmp_path: Path) -> None:
    bid = sha256_bytes(b"nothing")
    assert not store.exists(bid)
    with pytest.raises(StoreError, match=f"bundle {bid[:12]} is not in"):
        store.get(bid, tmp_path / "out")
    with pytest.raises(StoreError, match="is not a bundle id"):
        store.exists("../../etc")


def test_get_into_existing_destination(
    store: FileBundleStore, bundle: tuple[Path, str], tmp_path: Path
) -> None:
    src, bid = bundle
    store.put(src)
    out = tmp_path / "out"
    store.get(bid, out)
    store.get(bid, out)  # an earlier copy of the same bundle is replaced by a fresh verified one
    (out / "config.json").chmod(0o644)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        store.get(bid, other)
    assert (other / "keep.txt").read_text() == "mine"


def test_relative_file_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: tuple[Path, str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file://rel/store")
    assert isinstance(store, FileBundleStore)
    assert store.root == tmp_path / "rel" / "store"
    src, bid = bundle
    assert store.put(src).uri == f"file://{tmp_path}/rel/store/bundles/{bid}"


def test_open_store_lists_known_schemes() -> None:
    with pytest.raises(StoreError, match=r"unknown scheme; known schemes: file://, s3://"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="no option bogus"):
        open_store("file:///tmp/x", bogus=1)


def test_register_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_base, "_SCHEMES", dict(store_base._SCHEMES))
    made: list[str] = []

    def factory(uri: str, **options: object) -> BundleStore:
        made.append(uri)
        return FileBundleStore(f"file://{tmp_path}")

    register_scheme("mem", factory)
    assert isinstance(open_store("mem://x"), FileBundleStore) and made == ["mem://x"]


def test_stored_files_are_read_only(store: FileBundleStore, bundle: tuple[Path, str]) -> None:
    src, bid = bundle
    store.put(src)
    mode = (store.root / "bundles" / bid / "manifest.json").stat().st_mode & 0o777
    assert mode == 0o444
    assert json.loads((store.root / "bundles" / bid / "manifest.json").read_bytes())["files"]


def test_rich_progress_adapter(
    store: FileBundleStore, bundle: tuple[Path, str], tmp_path: Path
) -> None:
    import io

    from rich.console import Console
    from rich.progress import Progress

    from pipeline.store import RichTransferProgress

    src, bid = bundle
    with Progress(console=Console(file=io.StringIO())) as progress:
        store.put(src, progress=RichTransferProgress(progress))
        store.get(bid, tmp_path / "out", progress=RichTransferProgress(progress))
    tasks = progress.tasks
    total = sum(len(v) for v in FILES.values())
    assert [t.total for t in tasks] == [total, total]
    assert [t.completed for t in tasks] == [total, total]
    assert tasks[0].description == "put test-bundle"
