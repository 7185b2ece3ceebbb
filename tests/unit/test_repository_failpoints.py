"""Fault injection at each write step of a directory repository: a SIGKILL there leaves a
repository whose config.pbtxt only names complete versions, and the next publish recovers.

Each case runs publish in a child process with TRTBUILD_FAILPOINT set (the kill is real: no
`finally` runs). The S3 backend calls the same steps (pipeline/repository/s3.py); its kill-point
runs need a SeaweedFS and are left to an integration test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.repository import failpoints
from pipeline.repository.local import DirectoryRepository
from tests.conftest import ROOT
from tests.triton_bundles import recipe, tensorrt_bundle

# what publishing three versions with keep=1 and no server goes through, in order
PUBLISH_STEPS = ["publish.composing", "publish.version_files", "publish.config", "publish.history", "prune.remove"]

CHILD = """
import sys
from pathlib import Path
from pipeline.bundle import facts_for_target
from pipeline.repository.publish import publish_bundle
repo, *bundles = sys.argv[1:]
for b in bundles:
    publish_bundle(Path(b), Path(repo), "m", facts=facts_for_target("h100", gpus=2), keep=1)
"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("trt")
    r = recipe("llama70b")
    return [tensorrt_bundle(root, r, seed=s) for s in (1, 2, 3)]


def publish_child(repo: Path, bundles: list[Path], failpoint: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != failpoints.ENV}
    env["PYTHONPATH"] = str(ROOT)
    if failpoint:
        env[failpoints.ENV] = failpoint
    return subprocess.run([sys.executable, "-c", CHILD, str(repo), *map(str, bundles)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def assert_consistent(repo: Path) -> None:
    """Every version config.pbtxt names is complete: its bundle, its own config, its composing models."""
    r = DirectoryRepository(repo)
    for m in ["m"]:
        for v in r.served_versions(m):
            assert v in r.versions(m), f"{m}: config.pbtxt serves version {v}, which is not there"
            assert r.bundle_id(m, v) is not None, f"{m}/{v}: no bundle manifest"
            for part in r.version_composing(m, v):
                assert (repo / part / "config.pbtxt").is_file(), f"{m}/{v}: composing model {part} missing"


def test_step_refuses_a_name_not_in_steps() -> None:
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.step("publish.typo")
    assert set(PUBLISH_STEPS) <= set(failpoints.STEPS)


@pytest.mark.parametrize("step", PUBLISH_STEPS)
def test_kill_at_each_publish_step_leaves_a_consistent_repository(step: str, bundles: list[Path],
                                                                  tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    killed = publish_child(repo, bundles, step)
    assert killed.returncode == -9, f"{step}: not killed there (rc {killed.returncode}): {killed.stderr[-2000:]}"
    assert_consistent(repo)
    # a rerun without the failpoint finishes the job from what the kill left
    again = publish_child(repo, bundles, None)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_consistent(repo)
    r = DirectoryRepository(repo)
    assert r.served_versions("m") == [max(r.versions("m"))]
    assert r.bundle_id("m", max(r.versions("m"))) is not None
