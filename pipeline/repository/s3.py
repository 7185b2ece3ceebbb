"""A Triton model repository on S3: `s3://bucket/prefix`, laid out exactly like a directory one.

Checked here against SeaweedFS: the nvidia-pytriton tritonserver 2.51 loads such a repository
given as `--model-repository=s3://HOST:PORT/bucket/prefix` (AWS: `s3://bucket/prefix`) with
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION in its environment. It copies a
model's whole directory (every version on S3) to a local temporary folder on each load, so
keep_versions bounds what each switch downloads.

Ordering: a version's objects are all written before config.pbtxt names it, and config.pbtxt
is the last object of a first publish, so a server that loads at any moment never sees a
half-written version in its policy. S3 has no rename, so a version whose upload was cut off is
visible as a prefix until it is cleaned up; no config names it. Only reference bundles are
served from S3: the other layouts render absolute paths into their configs, and Triton runs an
S3 model from a temporary copy whose path is not known in advance.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.bundle import Bundle
from pipeline.repository.base import CONFIG, ModelRepository, RepositoryError
from pipeline.repository.lease import Lease
from pipeline.repository.lease_s3 import S3Lease
from pipeline.repository.render import BUNDLE_DIR
from pipeline.util.hashing import iter_content_files
from pipeline.util.s3_newer import put_newer


class S3Repository(ModelRepository):
    kind = "s3"
    single_server = False  # replicas poll it

    def __init__(self, uri: str, *, endpoint_url: str | None = None) -> None:
        from pipeline.store.s3 import S3BundleStore

        super().__init__()
        # The bundle store's client: same endpoint, region and credential rules, same error lines.
        self._s3 = S3BundleStore(uri, endpoint_url=endpoint_url)
        self.uri = self._s3.uri
        self.bucket, self.prefix = self._s3.bucket, self._s3.prefix

    @property
    def client(self) -> Any:
        return self._s3.client

    def errors(self, op: str) -> contextlib.AbstractContextManager[None]:
        return self._s3._errors(op)  # one error translation (and no secret in it) for every S3 use

    def triton_uri(self) -> str:
        """The --model-repository value Triton needs: s3://host:port/bucket/prefix off AWS."""
        if not self._s3.endpoint:
            return self.uri
        ep = urlsplit(self._s3.endpoint)
        return f"s3://{ep.netloc}/{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def key(self, *parts: str | int) -> str:
        return "/".join(str(p) for p in (self.prefix, *parts) if str(p))

    def where(self, model: str, *parts: str | int) -> str:
        return f"s3://{self.bucket}/{self.key(model, *parts)}"

    def lease(self, model: str) -> Lease:
        return S3Lease(self.client, self.bucket, self.prefix, model)

    def check_bundle(self, bundle: Bundle) -> None:
        if bundle.backend != "reference":
            raise RepositoryError(f"publishing a '{bundle.backend}' bundle into an s3:// Triton repository is not "
                                  "wired yet (its configs hold absolute paths); publish into a directory")

    # ---- reading
    def read_file(self, model: str, *parts: str | int) -> bytes | None:
        from botocore.exceptions import ClientError

        with self.errors("read"):
            try:
                return bytes(self.client.get_object(Bucket=self.bucket, Key=self.key(model, *parts))["Body"].read())
            except ClientError as e:
                if str(e.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise

    def keys(self, *parts: str | int, limit: int | None = None) -> list[str]:
        prefix = self.key(*parts) + "/"
        out: list[str] = []
        extra = {"PaginationConfig": {"MaxItems": limit}} if limit else {}
        with self.errors("list"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                              **extra):
                out.extend(o["Key"] for o in page.get("Contents", []))
        return out

    def exists(self, model: str, *parts: str | int) -> bool:
        return bool(self.keys(model, *parts, limit=1)) or self.read_file(model, *parts) is not None

    def versions(self, model: str) -> list[int]:
        prefix = self.key(model) + "/"
        found: set[int] = set()
        for k in self.keys(model):
            first = k[len(prefix):].split("/", 1)[0]
            if first.isdigit() and "/" in k[len(prefix):]:
                found.add(int(first))
        return sorted(found)

    # ---- writing: every write step of an S3 repository
    def _put(self, step: str, data: bytes, *parts: str | int) -> None:
        self._write_step(step)
        with self.errors("write"):
            if len(parts) == 2 and parts[1] == CONFIG:
                # Later than every object of the model, or Triton takes the reload for a no-op
                # (whole-second Last-Modified: pipeline/util/s3_newer.py)
                put_newer(self.client, self.bucket, self.key(*parts), data, prefix=self.key(parts[0]) + "/")
            else:
                self.client.put_object(Bucket=self.bucket, Key=self.key(*parts), Body=data)

    def write_file(self, step: str, data: bytes, model: str, *parts: str) -> None:
        self._put(step, data, model, *parts)  # a PUT replaces an object atomically

    def delete_file(self, step: str, model: str, *parts: str) -> None:
        self._write_step(step)
        with self.errors("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(model, *parts))

    def write_version(self, step: str, model: str, version: int, bundle_dir: Path, files: dict[str, str]) -> None:
        # the bundle's manifest.json last: a version whose manifest is there is complete (a killed
        # upload leaves a version without one, which publish and rollback do not take as present)
        content = sorted(iter_content_files(bundle_dir), key=lambda f: f.relative_to(bundle_dir).as_posix()
                         == "manifest.json")
        with self.errors("upload version"):
            for f in content[:-1]:
                self._write_step(step)
                self.client.upload_file(str(f), self.bucket, self.key(model, version, BUNDLE_DIR,
                                                                      f.relative_to(bundle_dir).as_posix()))
        for rel, text in files.items():
            self._put(step, text.encode(), model, version, rel)
        with self.errors("upload version"):
            self._write_step(step)
            self.client.upload_file(str(content[-1]), self.bucket, self.key(model, version, BUNDLE_DIR,
                                                                             "manifest.json"))

    def write_model(self, step: str, name: str, version: int, config_text: str, files: dict[str, str]) -> None:
        for rel, text in files.items():
            self._put(step, text.encode(), name, version, rel)
        self._put(step, config_text.encode(), name, CONFIG)  # last: the model is complete

    def remove_tree(self, step: str, model: str, *parts: str | int) -> None:
        keys = self.keys(model, *parts)
        if not keys:
            return
        self._write_step(step)
        with self.errors("delete version"):
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
