"""The S3 bundle store against a real SeaweedFS on loopback (credentials enforced)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.errors import IntegrityError, StoreError
from pipeline.store import ByteCounter, open_store
from pipeline.store.s3 import S3BundleStore
from pipeline.util.hashing import sha256_bytes
from pipeline.util.net import free_port
from tests.integration.services_fixtures import *  # noqa: F403 - fixtures
from tests.integration.services_fixtures import S3Service, make_bundle

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def small_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"model": "tiny"}',
        "weights/model.safetensors": os.urandom(3 * MiB),
        "tokenizer/tokenizer.json": os.urandom(2000),
        "empty": b"",
    }


def test_put_get_roundtrip_with_multipart(s3_env: S3Service, s3_uri: str, tmp_path: Path) -> None:
    files = small_files()
    files["weights/big.bin"] = os.urandom(21 * MiB)  # > the 8 MiB chunk used here: multipart
    src = tmp_path / "b"
    bid = make_bundle(src, files)
    store = open_store(s3_uri, multipart_chunksize=8 * MiB, concurrency=4)
    assert isinstance(store, S3BundleStore)
    progress = ByteCounter()
    stored = store.put(src, progress=progress)
    total = sum(len(v) for v in files.values())
    assert (stored.bundle_id, stored.uri) == (bid, f"{s3_uri}/bundles/{bid}")
    assert stored.uploaded_bytes == total == progress.total == progress.done
    assert (
        stored.uploaded_files == len(files)
        and stored.skipped_files == 0
        and not stored.already_stored
    )

    client = s3_env.client()
    key = s3_uri.removeprefix("s3://trtbuild-test/") + f"/bundles/{bid}/files/weights/big.bin"
    head = client.head_object(Bucket="trtbuild-test", Key=key)
    assert head["Metadata"]["sha256"] == sha256_bytes(files["weights/big.bin"])
    assert head["ContentLength"] == 21 * MiB

    assert store.exists(bid) and store.list() == [bid]
    got = store.get(bid, tmp_path / "out", progress=(down := ByteCounter()))
    assert down.done == total
    for rel, data in files.items():
        assert (got / rel).read_bytes() == data
    assert (got / "manifest.json").read_bytes() == (src / "manifest.json").read_bytes()


def test_same_digest_twice_is_a_noop(s3_env: S3Service, s3_uri: str, tmp_path: Path) -> None:
    src = tmp_path / "b"
    bid = make_bundle(src, small_files())
    store = open_store(s3_uri)
    first = store.put(src)
    assert not first.already_stored
    second = store.put(src)
    assert second.already_stored and second.uploaded_bytes == 0 and second.uploaded_files == 0
    assert second.bundle_id == bid
    # The conditional write itself: a second manifest PUT is refused with 412, not overwritten.
    assert isinstance(store, S3BundleStore)
    assert store._write_manifest(bid, (src / "manifest.json").read_bytes()) is False


_PUT_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from pipeline.store import open_store

    class P:
        def __init__(self): self.done = 0; self.lock = threading.Lock()
        def start(self, total, description): print(f"total {total}", flush=True)
        def advance(self, n):
            with self.lock:
                self.done += n
                print(f"done {self.done}", flush=True)

    store = open_store(sys.argv[1], concurrency=2, multipart_chunksize=8 << 20)
    store.put(Path(sys.argv[2]), progress=P())
    print("finished", flush=True)
    """
)


def test_killed_put_resumes_with_missing_files_only(
    s3_env: S3Service, s3_uri: str, tmp_path: Path
) -> None:
    files = {f"shards/part-{i:02d}.bin": os.urandom(6 * MiB) for i in range(10)}
    files["z-large.bin"] = os.urandom(40 * MiB)
    src = tmp_path / "b"
    bid = make_bundle(src, files)
    total = sum(len(v) for v in files.values())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _PUT_SCRIPT, s3_uri, str(src)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    killed_at = 0
    for line in proc.stdout:
        if line.startswith("done ") and int(line.split()[1]) >= total * 0.4:
            killed_at = int(line.split()[1])
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert killed_at, "the upload finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL

    store = open_store(s3_uri)
    assert not store.exists(bid) and bid not in store.list()  # no manifest: no bundle
    # what the killed put left half-uploaded, plus one planted for certain
    client, bucket = store.client, store.bucket  # type: ignore[attr-defined]
    prefix = f"{store._bundle_key(bid)}/"  # type: ignore[attr-defined]
    planted = client.create_multipart_upload(Bucket=bucket, Key=prefix + "files/z-large.bin")
    client.upload_part(Bucket=bucket, Key=prefix + "files/z-large.bin", UploadId=planted["UploadId"],
                       PartNumber=1, Body=b"x" * (5 * MiB))
    time.sleep(1.1)  # S3 timestamps have second resolution
    left = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    assert len(left) >= 1
    stored = store.put(src)
    assert stored.aborted_uploads == len(left)
    assert client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) == []
    assert not stored.already_stored
    assert stored.skipped_files >= 1 and stored.uploaded_files >= 1
    assert stored.skipped_files + stored.uploaded_files == len(files)
    assert stored.uploaded_bytes < total
    assert (
        stored.uploaded_bytes
        <= total - sum(6 * MiB for _ in range(stored.skipped_files)) + 40 * MiB
    )
    got = store.get(bid, tmp_path / "out")
    for rel, data in files.items():
        assert (got / rel).read_bytes() == data


def test_get_refuses_a_flipped_byte(s3_env: S3Service, s3_uri: str, tmp_path: Path) -> None:
    files = small_files()
    src = tmp_path / "b"
    bid = make_bundle(src, files)
    store = open_store(s3_uri)
    store.put(src)
    client = s3_env.client()
    key = (
        s3_uri.removeprefix("s3://trtbuild-test/")
        + f"/bundles/{bid}/files/weights/model.safetensors"
    )
    obj = client.get_object(Bucket="trtbuild-test", Key=key)
    data = bytearray(obj["Body"].read())
    data[len(data) // 2] ^= 0xFF
    # Same size and same sha256 metadata: only the content betrays the damage.
    client.put_object(Bucket="trtbuild-test", Key=key, Body=bytes(data), Metadata=obj["Metadata"])
    with pytest.raises(IntegrityError, match=r"weights/model\.safetensors") as exc:
        store.get(bid, tmp_path / "out")
    assert f"{s3_uri}/bundles/{bid}/files/weights/model.safetensors" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_get_refuses_a_flipped_byte_in_a_middle_part(
    s3_env: S3Service, s3_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashed as the bytes arrive (a multipart object, 5 MiB parts): the damage is still found, by
    name, without reading the file back, and nothing is left under the destination."""
    files = small_files()
    files["weights/big.bin"] = os.urandom(23 * MiB)
    src = tmp_path / "b"
    bid = make_bundle(src, files)
    store = open_store(s3_uri, multipart_chunksize=5 * MiB, concurrency=3)
    store.put(src)
    good = store.get(bid, tmp_path / "good")
    assert (good / "weights/big.bin").read_bytes() == files["weights/big.bin"]

    client = s3_env.client()
    key = s3_uri.removeprefix("s3://trtbuild-test/") + f"/bundles/{bid}/files/weights/big.bin"
    obj = client.get_object(Bucket="trtbuild-test", Key=key)
    data = bytearray(obj["Body"].read())
    data[12 * MiB + 7] ^= 0x01  # inside the third of five parts
    client.put_object(Bucket="trtbuild-test", Key=key, Body=bytes(data), Metadata=obj["Metadata"])

    from pipeline.store import base

    def no_read_back(path: Path) -> str:
        raise AssertionError(f"{path} read back: the S3 store hashes while downloading")

    monkeypatch.setattr(base, "sha256_file", no_read_back)
    with pytest.raises(IntegrityError, match=r"weights/big\.bin: .* does not match its sha256"):
        store.get(bid, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-out")]  # no staging left


def test_get_names_a_missing_object(s3_env: S3Service, s3_uri: str, tmp_path: Path) -> None:
    files = small_files()
    files["weights/big.bin"] = os.urandom(11 * MiB)
    src = tmp_path / "b"
    bid = make_bundle(src, files)
    store = open_store(s3_uri, multipart_chunksize=5 * MiB)
    store.put(src)
    prefix = s3_uri.removeprefix("s3://trtbuild-test/") + f"/bundles/{bid}/files/"
    s3_env.client().delete_object(Bucket="trtbuild-test", Key=prefix + "weights/big.bin")
    with pytest.raises(StoreError, match=r"weights/big\.bin: .* is missing from the store"):
        store.get(bid, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_credentials_one_line_no_secret(
    s3_env: S3Service, s3_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + os.urandom(12).hex()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    src = tmp_path / "b"
    make_bundle(src, small_files())
    with pytest.raises(StoreError) as exc:
        open_store(s3_uri).put(src)
    line = exc.value.one_line()
    assert "\n" not in line
    assert "refused the credentials" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert wrong not in line and s3_env.secret_key not in line and s3_env.access_key not in line
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_no_credentials(s3_env: S3Service, s3_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StoreError, match="no AWS credentials found"):
        open_store(s3_uri).list()


def test_missing_bucket(s3_env: S3Service) -> None:
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist") as exc:
        open_store("s3://no-such-bucket-here/x").list()
    assert "\n" not in exc.value.one_line()


def test_endpoint_down(s3_env: S3Service, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    with pytest.raises(
        StoreError,
        match=rf"cannot reach the S3 endpoint.*127\.0\.0\.1:{port}|127\.0\.0\.1:{port}.*"
        r"cannot reach",
    ) as exc:
        open_store("s3://trtbuild-test/x", max_attempts=1).exists(sha256_bytes(b"x"))
    assert "trtbuild local up" in exc.value.one_line()


def test_endpoint_option_wins_over_env(s3_env: S3Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    store = open_store("s3://trtbuild-test/x", endpoint_url=s3_env.endpoint)
    assert isinstance(store, S3BundleStore) and store.endpoint == s3_env.endpoint
    assert store.list() == []
