"""The two kinds of Triton model repository, each served by a real tritonserver, for tests that run
once per kind: `@pytest.mark.parametrize("target", KINDS, indirect=True)`.

    directory  a temporary directory
    s3         s3://<own bucket>/repo on the session's SeaweedFS; the tritonserver reads it itself

One server per kind per test module (module scope), started only when a test of that kind runs.
Each module gets a bucket of its own, apart from other tests' objects: Triton walks every object
under the repository on each load (no object-count limit was found; README: S3 model repositories).

A test module that uses these imports the fixtures: `from tests.integration.repo_targets import *`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.repository import ModelRepository, open_repository
from pipeline.triton.server import TritonServer, locate_tritonserver
from pipeline.util.hashing import iter_content_files
from tests.integration.services_fixtures import BUCKET, S3Service, s3_env, seaweed_s3, use_s3_env

KINDS = ["directory", "s3"]
__all__ = ["KINDS", "RepoTarget", "dir_target", "own_bucket", "s3_env", "s3_target", "seaweed_s3", "target",
           "upload_tree"]


def own_bucket(svc: S3Service) -> str:
    """A fresh bucket for one repository, apart from other tests' objects."""
    name = f"triton-{uuid.uuid4().hex[:12]}"
    svc.client().create_bucket(Bucket=name)
    return name


def upload_tree(svc: S3Service, local: Path, prefix: str, bucket: str = BUCKET) -> None:
    client = svc.client()
    for p in sorted(local.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(local).as_posix()}", Body=p.read_bytes())


@dataclass
class RepoTarget:
    kind: str
    uri: str  # what publish / sync / a desired-state file are given
    repo: ModelRepository
    server: TritonServer
    s3: S3Service | None = None

    @property
    def url(self) -> str:
        return self.server.http_url

    def snapshot(self) -> dict[str, bytes]:
        """Every file (object) of the repository and its bytes."""
        if self.s3 is None:
            root = Path(self.uri)
            return {str(p.relative_to(root)): p.read_bytes() for p in iter_content_files(root)}
        client, bucket = self.s3.client(), self.uri.removeprefix("s3://").split("/", 1)[0]
        out: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out


@pytest.fixture(scope="module")
def dir_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepoTarget]:
    root = tmp_path_factory.mktemp("repo")
    srv = TritonServer(locate_tritonserver(None), log_path=root.parent / "triton-dir.log")
    with srv.start(root):
        yield RepoTarget("directory", str(root), open_repository(root), srv)


@pytest.fixture(scope="module")
def s3_target(seaweed_s3: S3Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepoTarget]:
    tmp = tmp_path_factory.mktemp("s3-target")
    mp = pytest.MonkeyPatch()
    try:
        use_s3_env(seaweed_s3, mp, tmp)  # this process's clients, for the module's tests
        uri = f"s3://{own_bucket(seaweed_s3)}/repo"
        repo = open_repository(uri)
        # Triton lists the repository at startup: an empty prefix is a missing directory to it
        seaweed_s3.client().put_object(Bucket=uri.split("/")[2], Key="repo/README", Body=b"trtbuild test repo\n")
        srv = TritonServer(locate_tritonserver(None), log_path=tmp / "triton-s3.log", env=seaweed_s3.env())
        with srv.start(repo.triton_uri()):
            yield RepoTarget("s3", uri, repo, srv, s3=seaweed_s3)
    finally:
        mp.undo()


@pytest.fixture
def target(request: pytest.FixtureRequest) -> RepoTarget:
    kind = getattr(request, "param", "directory")
    t: RepoTarget = request.getfixturevalue("dir_target" if kind == "directory" else "s3_target")
    if t.s3 is not None:
        request.getfixturevalue("s3_env")  # this test's AWS environment (the module's was set up before)
    return t
