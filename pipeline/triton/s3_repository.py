"""A Triton model repository on S3: `s3://bucket/prefix`, laid out exactly like a local one.

    <prefix>/<model>/config.pbtxt
    <prefix>/<model>/<N>/model.py            (the reference backend's python model)
    <prefix>/<model>/<N>/bundle/<file>       (every file of the bundle, manifest.json included)

Checked here against SeaweedFS: the nvidia-pytriton tritonserver 2.51 loads such a repository
given as `--model-repository=s3://HOST:PORT/bucket/prefix` (AWS: `s3://bucket/prefix`) with
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION in its environment. It copies a
model's whole directory (every version on S3) to a local temporary folder on each load, so
keep_versions bounds what each switch downloads.

Ordering: a version's objects are all written before config.pbtxt names it, and config.pbtxt
is the last object of a first publish, so a server that loads at any moment never sees a
half-written version in its policy. One writer per model at a time (CI's concurrency group):
S3 gives this module no lock.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.bundle import RuntimeFacts, check_compatible, load_bundle
from pipeline.errors import ServiceError
from pipeline.names import check_name
from pipeline.triton import pbtxt
from pipeline.triton.publish import Published, smoke_check
from pipeline.triton.render import REFERENCE_SHIM
from pipeline.triton.repository import RepositoryError, parse_config, reference_config, render_config
from pipeline.util.hashing import iter_content_files, sha256_bytes
from pipeline.util.s3_newer import put_newer

CONFIG = "config.pbtxt"


def is_s3(repository: str | Path) -> bool:
    return str(repository).startswith("s3://")


class S3ModelRepository:
    def __init__(self, uri: str, *, endpoint_url: str | None = None) -> None:
        from pipeline.store.s3 import S3BundleStore

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

    # ---- reading
    def read(self, *parts: str | int) -> bytes | None:
        from botocore.exceptions import ClientError

        with self.errors("read"):
            try:
                return bytes(self.client.get_object(Bucket=self.bucket, Key=self.key(*parts))["Body"].read())
            except ClientError as e:
                if str(e.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise

    def keys(self, *parts: str | int) -> list[str]:
        prefix = self.key(*parts) + "/"
        out: list[str] = []
        with self.errors("list"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend(o["Key"] for o in page.get("Contents", []))
        return out

    def versions(self, model: str) -> list[int]:
        prefix = self.key(model) + "/"
        found: set[int] = set()
        for k in self.keys(model):
            first = k[len(prefix):].split("/", 1)[0]
            if first.isdigit() and "/" in k[len(prefix):]:
                found.add(int(first))
        return sorted(found)

    def served_versions(self, model: str) -> list[int]:
        data = self.read(model, CONFIG)
        if data is None:
            return []
        cfg = parse_config(data.decode())
        if cfg.version_policy.WhichOneof("policy_choice") == "specific":
            return sorted(cfg.version_policy.specific.versions)
        return self.versions(model)[-1:]

    def bundle_id(self, model: str, version: int) -> str | None:
        data = self.read(model, version, "bundle", "manifest.json")
        return sha256_bytes(data) if data is not None else None

    def version_of(self, model: str, bundle_id: str) -> int | None:
        return next((v for v in self.versions(model) if self.bundle_id(model, v) == bundle_id), None)

    # ---- writing
    def write(self, data: bytes, *parts: str | int) -> None:
        with self.errors("write"):
            self.client.put_object(Bucket=self.bucket, Key=self.key(*parts), Body=data)

    def materialize(self, model: str, bundle_dir: Path, version: int) -> None:
        """Upload `<model>/<version>/`: the bundle's files, then the python model."""
        if self.keys(model, version):
            raise RepositoryError(f"{self.uri}/{model}/{version} already exists; versions are immutable")
        with self.errors("upload version"):
            for f in iter_content_files(bundle_dir):
                rel = f.relative_to(bundle_dir).as_posix()
                self.client.upload_file(str(f), self.bucket, self.key(model, version, "bundle", rel))
        self.write(REFERENCE_SHIM.encode(), model, version, "model.py")

    def remove_version(self, model: str, version: int) -> None:
        keys = self.keys(model, version)
        with self.errors("delete version"):
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def prune(self, model: str, keep: int, protect: list[int]) -> list[int]:
        versions = self.versions(model)
        removed = []
        for v in versions[: max(0, len(versions) - keep)]:
            if v not in protect:
                self.remove_version(model, v)
                removed.append(v)
        return removed


@dataclass
class S3Config:
    """switch_version's view of a model on S3 (see pipeline.triton.switch.ConfigSource)."""

    repo: S3ModelRepository
    model: str

    def check(self, version: int) -> None:
        if self.repo.read(self.model, CONFIG) is None:
            raise ServiceError(f"no config.pbtxt for model '{self.model}' in {self.repo.uri}")
        if version not in self.repo.versions(self.model):
            raise ServiceError(f"model '{self.model}' has no version {version} in {self.repo.uri}")

    def read(self) -> bytes:
        data = self.repo.read(self.model, CONFIG)
        if data is None:
            raise ServiceError(f"config.pbtxt of '{self.model}' vanished from {self.repo.uri}")
        return data

    def write(self, data: bytes) -> None:
        # Later than every object of the model, or Triton takes the reload for a no-op
        # (whole-second Last-Modified: pipeline/util/s3_newer.py)
        with self.repo.errors("write"):
            put_newer(self.repo.client, self.repo.bucket, self.repo.key(self.model, CONFIG), data,
                      prefix=self.repo.key(self.model) + "/")

    def lock(self, timeout: float) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()  # one writer per model: CI's concurrency group

    def local_version_dir(self, version: int) -> Path | None:
        return None  # Triton runs the model from its own temporary copy


def switch_s3(repo: S3ModelRepository, model: str, version: int, *, server_url: str | None,
              load_timeout: float = 300.0, smoke_prompt: str = "The capital of France is") -> dict[str, float]:
    """Serve `version` (already on S3): live through switch_version, or by the policy alone."""
    if not server_url:
        cfg = S3Config(repo, model)
        cfg.check(version)
        cfg.write(pbtxt.with_version_policy(cfg.read().decode(), specific=[version]).encode())
        return {}
    from pipeline.triton.control import ModelControl
    from pipeline.triton.switch import switch_version

    res = switch_version(ModelControl(server_url), None, model, version, timeout=load_timeout,
                         smoke=smoke_check(server_url, model, smoke_prompt), config=S3Config(repo, model))
    return {"load": res.load_s, "ready": res.ready_s, "smoke": res.smoke_s, "total": res.total_s,
            "overhead": res.overhead_s}


def publish_bundle_s3(bundle_dir: Path, repo: S3ModelRepository, model: str, *, facts: RuntimeFacts,
                      keep: int = 3, server_url: str | None = None, load_timeout: float = 300.0,
                      smoke_prompt: str = "The capital of France is", instances: int = 1) -> Published:
    """publish_bundle for an s3:// repository: the same checks, order and cleanup on failure."""
    check_name(model, "model")
    bundle = load_bundle(bundle_dir)  # every file's sha256, before anything is written
    check_compatible(bundle, facts)
    if bundle.backend != "reference":
        raise RepositoryError(f"publishing a '{bundle.backend}' bundle into Triton is not wired yet")
    existing = repo.version_of(model, bundle.id)
    previous = repo.served_versions(model)
    if existing is not None and previous == [existing] and not server_url:
        return Published(model, existing, bundle.id, repo.uri, previous, [], False, {}, already=True)
    created = existing is None
    version = existing if existing is not None else max(repo.versions(model), default=0) + 1
    first = repo.read(model, CONFIG) is None
    seconds: dict[str, float] = {}
    try:
        if created:
            repo.materialize(model, bundle.dir, version)
        if first:
            cfg = reference_config(model, bundle, versions=[version], instances=instances)
            repo.write(render_config(cfg).encode(), model, CONFIG)  # last: the version is complete
            if server_url:
                from pipeline.triton.control import ModelControl

                control = ModelControl(server_url)
                control.load(model, timeout=load_timeout)
                control.wait_ready(model, version, timeout=load_timeout)
                smoke_check(server_url, model, smoke_prompt)(version)
        else:
            seconds = switch_s3(repo, model, version, server_url=server_url, load_timeout=load_timeout,
                                smoke_prompt=smoke_prompt)
    except BaseException:
        if created:
            repo.remove_version(model, version)
            if first:
                with contextlib.suppress(Exception):
                    repo.client.delete_object(Bucket=repo.bucket, Key=repo.key(model, CONFIG))
        raise
    pruned = repo.prune(model, keep, protect=[version, *previous])
    return Published(model, version, bundle.id, repo.uri, previous, pruned, bool(server_url), seconds,
                     already=not created)

