"""`trtbuild sync deploy/<env>.yaml` against a real tritonserver, a file:// store and MLflow (sqlite).

The desired-state file lives in a real git repository: apply, apply again (no-op), change the
pinned version, then `git revert` the change (the previous version serves again), each switch
with a client sending requests the whole time and zero failed requests; once into a directory
repository and once into s3://bucket/prefix (SeaweedFS) that the tritonserver reads itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import DriftError
from pipeline.gitops.desired import load_desired
from pipeline.gitops.sync import SyncResult, raise_for_drift, sync
from pipeline.registry.mlflow_registry import open_registry
from pipeline.repository.local import DirectoryRepository
from pipeline.store import open_store
from pipeline.triton.control import ModelControl
from pipeline.triton.server import TritonServer
from tests.conftest import ROOT
from tests.integration.repo_targets import *  # noqa: F403 - fixtures
from tests.integration.repo_targets import KINDS, RepoTarget
from tests.integration.services_fixtures import *  # noqa: F403 - fixtures
from tests.integration.test_publish_triton import MODEL, Load, collapse, make_bundle

# longer than the 600 s default (pyproject.toml): the release fixture allows its run 600 s, then a sync
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
REGISTERED = "tiny-release"


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two tiny reference bundles stored in a file:// store and registered as versions 1 and 2."""
    root = tmp_path_factory.mktemp("released")
    store = open_store(f"file://{root / 'store'}")
    registry_uri = f"sqlite:///{root / 'mlflow.db'}"
    registry = open_registry(registry_uri)
    ids = {}
    for seed in (1, 2):
        stored = store.put(make_bundle(root, seed))
        version = registry.register_bundle(REGISTERED, stored.uri, stored.bundle_id)
        assert version == seed
        ids[seed] = stored.bundle_id
    registry.set_alias(REGISTERED, "candidate", 2)
    return {"registry": registry_uri, "ids": ids, "root": root}


@pytest.fixture(scope="module")
def server(dir_target: RepoTarget) -> tuple[TritonServer, Path]:
    return dir_target.server, Path(dir_target.uri)


def desired_text(registry: str, repo: Path | str, url: str, selector: str) -> str:
    return (f"# production\nenvironment: production\nregistry: {registry}\nrepository: {repo}\n"
            f"server_url: {url}\nmodels:\n  {MODEL}:\n    registered_model: {REGISTERED}\n    {selector}\n")


def trtbuild(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=600)


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_apply_noop_change_revert_with_zero_failed_requests(
        target: RepoTarget, released: dict[str, object], tmp_path: Path) -> None:
    repo, url = target.uri, target.url
    ids: dict[int, str] = released["ids"]  # type: ignore[assignment]
    cache = tmp_path / "cache"
    gitops = tmp_path / "gitops"
    (gitops / "deploy").mkdir(parents=True)
    git(gitops, "init", "-q", "-b", "main")
    state_file = gitops / "deploy" / "production.yaml"
    state_file.write_text(desired_text(str(released["registry"]), repo, url, "version: 1"))
    git(gitops, "add", "-A")
    git(gitops, "commit", "-q", "-m", "production: tiny v1")

    def apply() -> SyncResult:
        res = sync(load_desired(state_file), cache=cache, load_timeout=120)
        raise_for_drift(res)
        return res

    first = apply()
    [m] = first.models
    assert m.action == "publish" and m.to_version == 1 and m.bundle_id == ids[1] and m.from_version is None
    assert ModelControl(url).ready_versions(MODEL) == [1]

    # apply again, through the CLI: a no-op that says so, exit 0
    t0 = time.monotonic()
    again = trtbuild(gitops, "sync", "deploy/production.yaml", "--json", "--cache", str(cache))
    noop_s = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["in_sync"] and not out["changed"] and out["models"][0]["action"] == "in-sync"
    assert "nothing to do" in again.stderr

    # the reviewed change: pin version 2
    state_file.write_text(state_file.read_text().replace("version: 1", "version: 2"))
    git(gitops, "commit", "-q", "-am", "production: tiny v2")
    dry = sync(load_desired(state_file), dry_run=True, cache=cache)
    assert dry.models[0].action == "would-publish" and target.repo.served_versions(MODEL) == [1]
    with Load(url) as load:
        up = apply()
    assert up.models[0].action == "publish" and up.models[0].to_version == 2
    assert up.models[0].from_version == 1 and up.models[0].from_bundle == ids[1]
    assert load.errors == [] and collapse(load.versions) == [1, 2]
    switch_requests = [len(load.versions)]

    # git revert of that commit = rollback: version 1 is still on disk, so it is switched back to
    git(gitops, "revert", "--no-edit", "HEAD")
    assert "version: 1" in state_file.read_text()
    with Load(url) as load:
        back = apply()
    assert back.models[0].action == "switch" and back.models[0].to_version == 1
    assert load.errors == [] and collapse(load.versions) == [2, 1]
    switch_requests.append(len(load.versions))
    assert target.repo.served_versions(MODEL) == [1] and ModelControl(url).ready_versions(MODEL) == [1]
    assert sorted(target.repo.versions(MODEL)) == [1, 2]  # nothing was materialized twice

    # an alias follows the registry: candidate -> v2 (on disk: a switch again)
    state_file.write_text(state_file.read_text().replace("version: 1", "alias: candidate"))
    with Load(url) as load:
        follow = apply()
    assert follow.models[0].action == "switch" and follow.models[0].registry_version == 2
    assert load.errors == [] and collapse(load.versions) == [1, 2]
    print(f"\nsync ({target.kind}): no-op CLI run {noop_s:.1f}s; requests during switches {switch_requests}; "
          f"switch seconds {back.models[0].seconds}")


def test_drift_it_cannot_fix_exits_nonzero(server: tuple[TritonServer, Path], released: dict[str, object],
                                           tmp_path: Path) -> None:
    srv, repo = server
    state_file = tmp_path / "production.yaml"
    # version 7 is not registered: nothing can be resolved, the repository is left as it is
    state_file.write_text(desired_text(str(released["registry"]), repo, srv.http_url, "version: 7"))
    before = DirectoryRepository(repo).served_versions(MODEL)
    res = sync(load_desired(state_file), cache=tmp_path / "cache")
    assert res.failed and "not found" in str(res.models[0].error)
    with pytest.raises(DriftError, match=f"not in the desired state: {MODEL}"):
        raise_for_drift(res)
    assert DirectoryRepository(repo).served_versions(MODEL) == before

    cli = trtbuild(tmp_path, "sync", str(state_file))
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert f"{MODEL}: version 7: FAILED" in cli.stderr

    # a bundle whose stored copy is damaged: fetched, refused by its sha256, nothing changes
    root: Path = released["root"]  # type: ignore[assignment]
    ids: dict[int, str] = released["ids"]  # type: ignore[assignment]
    damaged = tmp_path / "store"
    import shutil

    shutil.copytree(root / "store", damaged)
    victim = next(p for p in (damaged / "bundles" / ids[2] / "files").rglob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    state_file.write_text(
        f"environment: production\nstore: file://{damaged}\nrepository: {tmp_path / 'fresh_repo'}\n"
        f"models:\n  {MODEL}:\n    digest: sha256:{ids[2]}\n")
    res = sync(load_desired(state_file), cache=tmp_path / "cache2")
    assert res.failed and "sha256" in str(res.models[0].error)
    assert not (tmp_path / "fresh_repo" / MODEL).exists()


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_two_syncs_at_once_publish_once(target: RepoTarget, released: dict[str, object], tmp_path: Path) -> None:
    """Two `trtbuild sync` processes on one desired state: the second waits for the model's lease,
    then finds the model in sync; exactly one version is written, and a client streams throughout."""
    from tests.integration.test_publish_triton import cli, wait_for_holder

    model, url = "racesync", target.url
    ids: dict[int, str] = released["ids"]  # type: ignore[assignment]
    state_file = tmp_path / "production.yaml"
    state_file.write_text(desired_text(str(released["registry"]), target.uri, url, "version: 1")
                          .replace(f"  {MODEL}:", f"  {model}:"))
    raise_for_drift(sync(load_desired(state_file), cache=tmp_path / "cache", load_timeout=120))
    state_file.write_text(state_file.read_text().replace("version: 1", "version: 2"))
    with Load(url, model) as load:
        first = cli("sync", str(state_file), "--json", "--cache", str(tmp_path / "cache1"))
        wait_for_holder(target.repo, model)
        second = cli("sync", str(state_file), "--json", "--cache", str(tmp_path / "cache2"))
        out1, err1 = first.communicate(timeout=300)
        out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (err1[-1500:], err2[-1500:])
    assert json.loads(out1)["models"][0]["action"] == "publish"
    assert json.loads(out2)["models"][0]["action"] == "in-sync", out2
    assert "waiting for lease on racesync held by" in err2, err2[-1500:]
    assert load.errors == [] and collapse(load.versions) == [1, 2]
    assert target.repo.versions(model) == [1, 2] and target.repo.served_versions(model) == [2]
    assert target.repo.bundle_id(model, 2) == ids[2]
