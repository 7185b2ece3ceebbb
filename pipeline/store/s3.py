"""A bundle store on S3 or an S3-compatible server (SeaweedFS, MinIO): `s3://bucket/prefix`.

- Endpoint: the `endpoint_url` option, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS.
- Credentials: the standard AWS chain only (environment, profile, instance role); they are never
  logged and never put into an error message.
- Uploads: one s3transfer manager for the whole bundle, so parts of all files share one pool of
  `concurrency` threads (parallel across files and within a file). Each object carries its own
  sha256 in its metadata (`x-amz-meta-sha256`): multipart ETags and checksums are composite, so
  they cannot be compared with the manifest. A rerun reuses objects whose size and sha256
  metadata match, the manifest is put last with If-None-Match: * (412: already released).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import StoreError
from pipeline.store.base import (
    BUNDLES_DIR,
    FILES_DIR,
    MANIFEST,
    BundleStore,
    FileEntry,
    TransferProgress,
    check_bundle_id,
)
from pipeline.store.s3_download import fetch_hashed

MiB = 1 << 20
SHA256_META = "sha256"
DEFAULT_CONCURRENCY = 8
# 16 MiB parts: 640 parts for a 10 GiB engine file (S3 allows 10,000), few enough requests to keep a
# loopback or LAN link busy, small enough that a killed upload loses little.
DEFAULT_CHUNK = 16 * MiB

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
    }
)
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_CREDS_HINT = (
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for the local SeaweedFS: "
    "`source artifacts/local/local.env` after `trtbuild local up`)"
)


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    return (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def _public_endpoint(endpoint: str | None) -> str:
    """The endpoint for messages: scheme://host:port only (never userinfo or query)."""
    if not endpoint:
        return "AWS S3"
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", "")) if hasattr(err, "response") else ""


def _status(err: Any) -> int:
    return (
        int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if hasattr(err, "response")
        else 0
    )


class _Progress:
    """s3transfer subscriber forwarding bytes to a TransferProgress (negative on a retried part)."""

    def __init__(self, progress: TransferProgress) -> None:
        from s3transfer.subscribers import BaseSubscriber

        outer = progress

        class Sub(BaseSubscriber):
            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                outer.advance(bytes_transferred)

        self.subscriber = Sub()


class S3BundleStore(BundleStore):
    scheme = "s3"

    def __init__(
        self,
        uri: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        multipart_chunksize: int = DEFAULT_CHUNK,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise StoreError(f"store URI '{uri}' must look like s3://bucket/prefix")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint = resolve_endpoint(endpoint_url)
        self.region = (
            region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self.concurrency = max(1, concurrency)
        self.chunk = max(5 * MiB, multipart_chunksize)  # S3's minimum part size
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._checked = False

    # ---- clients
    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                connect, read, attempts = self._timeouts
                cfg = Config(
                    region_name=self.region,
                    max_pool_connections=self.concurrency * 2 + 4,
                    connect_timeout=connect,
                    read_timeout=read,
                    retries={"max_attempts": attempts, "mode": "standard"},
                    s3={"addressing_style": "path"} if self.endpoint else {},
                )
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint, config=cfg
                )
            return self._client

    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.chunk,
            multipart_chunksize=self.chunk,
            max_concurrency=self.concurrency,
            max_io_queue=1000,
            io_chunksize=MiB,
            use_threads=True,
            preferred_transfer_client="classic",
        )

    @contextmanager
    def _manager(self) -> Iterator[Any]:
        from boto3.s3.transfer import create_transfer_manager

        # The manager's own __exit__ cancels in-flight transfers on an exception. Not
        # mgr.shutdown(cancel=True): it passes its arguments shifted to _shutdown and raises
        # TypeError ('str' object is not callable) instead (boto/s3transfer#143, #312; still in 0.19).
        with create_transfer_manager(self.client, self.transfer_config()) as mgr:
            yield mgr

    # ---- keys
    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _bundle_key(self, bundle_id: str) -> str:
        return self._key(BUNDLES_DIR, check_bundle_id(bundle_id))

    def _file_key(self, bundle_id: str, rel: str) -> str:
        return f"{self._bundle_key(bundle_id)}/{FILES_DIR}/{rel}"

    # ---- errors
    @contextmanager
    def _errors(self, op: str) -> Iterator[None]:
        """Turn botocore failures into one StoreError line: what happened and the fix, no secret."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )

        where = f"{self.uri} at {_public_endpoint(self.endpoint)}"
        try:
            yield
        except (NoCredentialsError, PartialCredentialsError):
            raise StoreError(
                f"{op} {self.uri}: no AWS credentials found", hint=_CREDS_HINT
            ) from None
        except BotoConnectionError:
            raise StoreError(
                f"{op} {where}: cannot reach the S3 endpoint",
                hint="start it (`trtbuild local up` for the local one) or set AWS_ENDPOINT_URL_S3",
            ) from None
        except ClientError as e:
            code, status = _code(e), _status(e)
            if code in _CREDENTIAL_CODES or status == 403:
                raise StoreError(
                    f"{op} {where}: the server refused the credentials ({code or status})",
                    hint=_CREDS_HINT,
                ) from None
            if code in _MISSING_BUCKET_CODES:
                raise StoreError(
                    f"{op} {where}: bucket '{self.bucket}' does not exist",
                    hint="create it (`trtbuild local up` creates trtbuild-bundles) or fix "
                    "TRTBUILD_STORE",
                ) from None
            msg = str(e.response.get("Error", {}).get("Message", "")).splitlines()[0:1]
            raise StoreError(
                f"{op} {where}: S3 error {code or status}{': ' + msg[0] if msg else ''}"
            ) from None
        except BotoCoreError as e:
            raise StoreError(f"{op} {where}: {type(e).__name__}") from None

    def _preflight(self, op: str) -> None:
        if self._checked:
            return
        with self._errors(op):
            # ListObjectsV2 gives real error codes where HEAD answers a bare 403/404.
            self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._key(BUNDLES_DIR) + "/", MaxKeys=1
            )
        self._checked = True

    # ---- hooks
    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as e:
            if _code(e) in _NOT_FOUND_CODES or _status(e) == 404:
                return None
            raise

    def _manifest_exists(self, bundle_id: str) -> bool:
        with self._errors("exists"):
            return self._head(f"{self._bundle_key(bundle_id)}/{MANIFEST}") is not None

    def _present_files(self, bundle_id: str, files: tuple[FileEntry, ...]) -> set[str]:
        base = f"{self._bundle_key(bundle_id)}/{FILES_DIR}/"
        sizes: dict[str, int] = {}
        with self._errors("put"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    sizes[obj["Key"][len(base) :]] = int(obj["Size"])
            candidates = [f for f in files if sizes.get(f.path) == f.size]

            def matches(entry: FileEntry) -> bool:
                head = self._head(base + entry.path)
                return (
                    head is not None and head.get("Metadata", {}).get(SHA256_META) == entry.sha256
                )

            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-head") as pool:
                flags = list(pool.map(matches, candidates))
        return {f.path for f, ok in zip(candidates, flags, strict=True) if ok}

    def _upload_files(
        self,
        bundle_dir: Path,
        bundle_id: str,
        files: Iterable[FileEntry],
        progress: TransferProgress,
    ) -> None:
        sub = _Progress(progress).subscriber
        with self._errors("put"), self._manager() as mgr:
            futures = [
                mgr.upload(
                    str(bundle_dir / f.path),
                    self.bucket,
                    self._file_key(bundle_id, f.path),
                    extra_args={"Metadata": {SHA256_META: f.sha256}},
                    subscribers=[sub],
                )
                for f in files
            ]
            for fut in futures:
                fut.result()

    def _write_manifest(self, bundle_id: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        with self._errors("put"):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=f"{self._bundle_key(bundle_id)}/{MANIFEST}",
                    Body=data,
                    ContentType="application/json",
                    IfNoneMatch="*",
                    Metadata={SHA256_META: bundle_id},
                )
            except ClientError as e:
                # 412: this digest is already released. 409: a concurrent put of it won the race.
                if _status(e) in (409, 412) or _code(e) in (
                    "PreconditionFailed",
                    "ConditionalRequestConflict",
                ):
                    return False
                raise
        return True

    def _abort_interrupted(self, bundle_id: str, before: float) -> int:
        """Abort multipart uploads under this bundle begun before `before`: a SIGKILLed put
        leaves its parts stored (and billed) until someone aborts them; S3 never does."""
        prefix = f"{self._bundle_key(bundle_id)}/"
        aborted = 0
        with self._errors("put"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Initiated"].timestamp() < before:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        aborted += 1
        return aborted

    def _read_manifest(self, bundle_id: str) -> bytes:
        from botocore.exceptions import ClientError

        with self._errors("get"):
            try:
                resp = self.client.get_object(
                    Bucket=self.bucket, Key=f"{self._bundle_key(bundle_id)}/{MANIFEST}"
                )
            except ClientError as e:
                if _code(e) in _NOT_FOUND_CODES or _status(e) == 404:
                    raise StoreError(
                        f"bundle {bundle_id[:12]} is not in {self.uri} (no manifest: never "
                        "released, or its upload did not finish)"
                    ) from None
                raise
            return bytes(resp["Body"].read())

    def _fetch_files(
        self, bundle_id: str, files: tuple[FileEntry, ...], dest: Path, progress: TransferProgress
    ) -> Generator[tuple[FileEntry, Path, str | None], None, None]:
        """One stream per file, `concurrency` files at a time (largest first), each hashed as its
        bytes arrive (s3_download.py): the sha256 comes with the file, nothing reads it back."""
        from botocore.exceptions import (
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )
        from urllib3.exceptions import ProtocolError

        retryable = (ResponseStreamingError, ReadTimeoutError, ConnectionClosedError,
                     IncompleteReadError, ProtocolError)  # fmt: skip
        client = self.client
        cancelled = threading.Event()

        def fetch(entry: FileEntry) -> tuple[FileEntry, Path, str | None]:
            path = dest / entry.path
            digest = fetch_hashed(client, self.bucket, self._file_key(bundle_id, entry.path), path,
                                  progress=progress, retryable=retryable, cancelled=cancelled)
            return entry, path, digest

        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-get")
        futures = {pool.submit(fetch, f): f for f in sorted(files, key=lambda f: -f.size)}
        try:
            with self._errors("get"):
                for fut in as_completed(futures):
                    try:
                        yield fut.result()
                    except Exception as e:
                        if _code(e) in _NOT_FOUND_CODES or _status(e) == 404:
                            rel = futures[fut].path
                            raise StoreError(
                                f"{rel}: {self.object_uri(bundle_id, rel)} is missing from the "
                                "store although the manifest lists it; delete the bundle and "
                                "release it again"
                            ) from None
                        raise
        finally:
            cancelled.set()  # stops the streams in flight when a file failed or a check did
            pool.shutdown(wait=True, cancel_futures=True)

    def _list_ids(self) -> list[str]:
        base = self._key(BUNDLES_DIR) + "/"
        with self._errors("list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            candidates = []
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    name = cp["Prefix"][len(base) :].rstrip("/")
                    try:
                        candidates.append(check_bundle_id(name))
                    except StoreError:
                        continue
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-head") as pool:
                flags = list(
                    pool.map(
                        lambda bid: self._head(f"{self._bundle_key(bid)}/{MANIFEST}") is not None,
                        candidates,
                    )
                )
        return [b for b, ok in zip(candidates, flags, strict=True) if ok]
