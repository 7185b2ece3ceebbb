"""Publish, serve and roll back reference bundles through a real tritonserver, under load; roll back
to pruned versions from a file:// and an s3:// (SeaweedFS) store; GPU bundles against a server
without their Triton backend.

The cases that exercise the repository itself (publish, switch, restore after a failed switch,
prune, rollback of a pruned version) run once per kind of repository: a directory and
s3://bucket/prefix (tests/integration/repo_targets.py); server-only cases run once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.bundle import facts_for_target, write_manifest
from pipeline.errors import CompatibilityError, IntegrityError, TrtbuildError
from pipeline.quant.calibration import load_calibration
from pipeline.quant.quantize import quantize_checkpoint
from pipeline.repository import ModelRepository, history, open_repository
from pipeline.repository.base import parse_config
from pipeline.repository.local import DirectoryRepository
from pipeline.repository.publish import BackendUnavailableError, publish_bundle, rollback
from pipeline.store import open_store
from pipeline.triton.client import LLMClient
from pipeline.triton.server import TritonServer
from pipeline.util.hashing import iter_content_files, sha256_file
from tests.conftest import ROOT
from tests.integration.repo_targets import *  # noqa: F403 - fixtures
from tests.integration.repo_targets import KINDS, RepoTarget
from tests.integration.services_fixtures import *  # noqa: F403 - fixtures
from tests.integration.services_fixtures import S3Service
from tests.tiny_model import save_tiny_checkpoint
from tests.triton_bundles import recipe, tensorrt_bundle
from tests.unit.lease_worker import Worker

pytestmark = pytest.mark.integration
CPU = facts_for_target("cpu")
MODEL = "tiny"


def make_bundle(root: Path, seed: int) -> Path:
    from transformers import AutoTokenizer

    src = save_tiny_checkpoint(root / f"src{seed}", seed=seed)
    cal = load_calibration("builtin:pydoc", AutoTokenizer.from_pretrained(src), samples=4, seq_len=32, seed=1)
    q = root / f"q{seed}"
    quantize_checkpoint(src, q, algo="fp8", kv_cache="fp8", calibration=cal, exports={"unified"}, dtype="float32")
    b = root / f"bundle{seed}"
    shutil.copytree(q / "unified", b / "checkpoint")
    compat = {"backend": "reference", "gpu": "cpu", "sm": None, "tensor_parallel": 1, "pipeline_parallel": 1}
    write_manifest(b, name="tiny", backend="reference", provenance={"seed": seed}, compatibility=compat,
                   runtime={"kind": "reference", "checkpoint": "checkpoint", "dtype": "float32",
                            "max_batch_size": 8, "max_seq_len": 256, "max_num_tokens": 512})
    return b


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {f"v{i}": make_bundle(root, i) for i in (1, 2, 3, 4)}


@pytest.fixture(scope="module")
def server(dir_target: RepoTarget) -> tuple[TritonServer, Path]:
    """The directory target's server, for the cases that run once (one server per kind per module)."""
    return dir_target.server, Path(dir_target.uri)


class Load:
    """A client sending requests continuously; records answering versions and failures."""

    def __init__(self, url: str, model: str = MODEL) -> None:
        self.model = model
        self.client = LLMClient(url, timeout=60)
        self.versions: list[int | None] = []
        self.errors: list[str] = []
        self.failed_at: list[float] = []  # when each failure happened (a drain's window)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                g = self.client.stream(self.model, "The object", max_tokens=3, ignore_eos=True)
                self.versions.append(g.model_version)
            except TrtbuildError as e:
                self.errors.append(str(e))
                self.failed_at.append(time.monotonic())
                time.sleep(0.02)

    def __enter__(self) -> Load:
        self.thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self.stop.set()
        self.thread.join(timeout=60)


def collapse(xs: list[Any]) -> list[Any]:
    return [x for i, x in enumerate(xs) if i == 0 or xs[i - 1] != x]


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_publish_switch_rollback_zero_failures(target: RepoTarget, bundles: dict[str, Path]) -> None:
    srv, repo = target.server, target.uri
    url = srv.http_url
    first = publish_bundle(bundles["v1"], repo, MODEL, facts=CPU, server_url=url)
    assert first.version == 1
    client = LLMClient(url, grpc_url=srv.grpc_url, timeout=60)
    http = client.stream(MODEL, "The object", max_tokens=5, ignore_eos=True)
    grpc = client.stream(MODEL, "The object", max_tokens=5, transport="grpc", ignore_eos=True)
    assert http.text and http.text == grpc.text and len(http.pieces) >= 2  # streamed, same greedy text
    assert http.model_version == 1

    with Load(url) as load:
        second = publish_bundle(bundles["v2"], repo, MODEL, facts=CPU, server_url=url)
    assert second.version == 2 and second.seconds["total"] > 0
    assert load.errors == [] and collapse(load.versions) == [1, 2]

    with Load(url) as load:
        back = rollback(repo, MODEL, server_url=url)
    assert back.version == 1 and load.errors == [] and collapse(load.versions) == [2, 1]
    assert target.repo.served_versions(MODEL) == [1]
    cfg = parse_config((target.repo.config(MODEL) or b"").decode())
    assert "${" not in str(cfg) and cfg.model_transaction_policy.decoupled


def snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in iter_content_files(repo)}


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_broken_versions_are_refused_and_nothing_changes(target: RepoTarget, bundles: dict[str, Path],
                                                         tmp_path: Path) -> None:
    repo, url = target.uri, target.url
    if target.repo.config(MODEL) is None:
        publish_bundle(bundles["v1"], repo, MODEL, facts=CPU, server_url=url)
    before = target.snapshot()
    serving = target.repo.served_versions(MODEL)

    # a corrupted file: refused before anything is written
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundles["v3"], corrupt)
    (corrupt / "checkpoint" / "config.json").write_text('{"garbage": true}')
    with pytest.raises(IntegrityError, match=r"checkpoint/config\.json"):
        publish_bundle(corrupt, repo, MODEL, facts=CPU, server_url=url)

    # a bundle whose model cannot initialize (valid manifest, unloadable weights): the switch fails,
    # the old version keeps serving, the repository is as it was
    broken = tmp_path / "broken"
    shutil.copytree(bundles["v3"], broken)
    cfg = json.loads((broken / "checkpoint" / "config.json").read_text())
    cfg["num_hidden_layers"] = 7
    (broken / "checkpoint" / "config.json").write_text(json.dumps(cfg))
    (broken / "manifest.json").unlink()
    write_manifest(broken, name="tiny", backend="reference", provenance={}, runtime=json.loads(
        (bundles["v3"] / "manifest.json").read_text())["runtime"], compatibility={"backend": "reference", "gpu": "cpu",
                                                                               "sm": None})
    with Load(url) as load, pytest.raises(TrtbuildError):
        publish_bundle(broken, repo, MODEL, facts=CPU, server_url=url, load_timeout=120)
    assert load.errors == [] and set(load.versions) == set(serving)
    assert target.snapshot() == before

    # a bundle for another target is refused with the reason
    gpu = tmp_path / "gpu"
    shutil.copytree(bundles["v3"], gpu)
    (gpu / "manifest.json").unlink()
    write_manifest(gpu, name="tiny", backend="tensorrt", provenance={}, runtime={},
                   compatibility={"backend": "tensorrt", "gpu": "h100", "sm": 90, "tensor_parallel": 1,
                                  "pipeline_parallel": 1})
    with pytest.raises(CompatibilityError, match="runtime has no NVIDIA GPU"):
        publish_bundle(gpu, repo, MODEL, facts=CPU, server_url=url)
    assert target.snapshot() == before


def served_version(url: str, model: str) -> int | None:
    return LLMClient(url, timeout=60).stream(model, "The object", max_tokens=2, ignore_eos=True).model_version


def publish_four_keep_two(url: str, repo: Path | str, model: str, bundles: dict[str, Path],
                          store: str) -> ModelRepository:
    for name in ("v1", "v2", "v3", "v4"):
        publish_bundle(bundles[name], repo, model, facts=CPU, keep=2, server_url=url, store=store)
    md = open_repository(repo)
    assert md.versions(model) == [3, 4] and md.served_versions(model) == [4]  # 1 and 2 were pruned
    assert sorted(history.read(md, model)) == [1, 2, 3, 4]
    return md


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_rollback_to_a_pruned_version_comes_back_from_a_file_store(target: RepoTarget, bundles: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    repo, url, model = target.uri, target.url, "tiny-file"
    store = open_store(f"file://{tmp_path / 'store'}")
    for b in bundles.values():
        store.put(b)
    md = publish_four_keep_two(url, repo, model, bundles, store.uri)

    # a damaged stored object: refused with the file named; the repository and what serves unchanged
    damaged = history.read(md, model)[2].bundle_id
    obj = tmp_path / "store" / "bundles" / damaged / "files" / "checkpoint" / "config.json"
    obj.chmod(0o644)
    obj.write_text('{"garbage": true}')
    before = target.snapshot()
    with pytest.raises(IntegrityError, match=r"checkpoint/config\.json: .*(does not match its sha256|bytes)"):
        rollback(repo, model, server_url=url, to=2)
    assert target.snapshot() == before and md.served_versions(model) == [4]
    assert served_version(url, model) == 4

    with Load(url, model) as load:
        back = rollback(repo, model, server_url=url, to=1)
    assert back.fetched and back.version == 1 and back.previous == [4]
    assert load.errors == [] and collapse(load.versions) == [4, 1]
    assert md.served_versions(model) == [1] and md.versions(model) == [1, 3, 4]
    v1_id = sha256_file(bundles["v1"] / "manifest.json")
    assert md.bundle_id(model, 1) == history.read(md, model)[1].bundle_id == v1_id
    assert served_version(url, model) == 1


def test_rollback_to_a_pruned_version_comes_back_from_s3(server: tuple[TritonServer, Path], bundles: dict[str, Path],
                                                         s3_env: S3Service, s3_uri: str) -> None:
    """The bundle store on S3 (the repository is a directory: the store, not the repository, is tested)."""
    srv, repo = server
    url, model = srv.http_url, "tiny-s3"
    store = open_store(s3_uri)
    for b in bundles.values():
        store.put(b)
    md = publish_four_keep_two(url, repo, model, bundles, s3_uri)
    assert history.read(md, model)[1].store == s3_uri

    damaged = history.read(md, model)[2].bundle_id
    key = store.object_uri(damaged, "checkpoint/config.json").removeprefix("s3://").split("/", 1)
    s3_env.client().put_object(Bucket=key[0], Key=key[1], Body=b'{"garbage": true}')
    before = snapshot(repo)
    with pytest.raises(IntegrityError, match=r"checkpoint/config\.json"):
        rollback(repo, model, server_url=url, to=2)
    assert snapshot(repo) == before and served_version(url, model) == 4

    back = rollback(repo, model, server_url=url, to=1)
    assert back.fetched and md.served_versions(model) == [1] and served_version(url, model) == 1


def test_tensorrt_bundle_is_refused_by_a_server_without_tensorrtllm(server: tuple[TritonServer, Path],
                                                                   tmp_path: Path) -> None:
    srv, repo = server
    bundle = tensorrt_bundle(tmp_path, recipe("llama70b"))
    h100 = facts_for_target("h100", gpus=2)
    before = snapshot(repo)
    with pytest.raises(BackendUnavailableError, match="tensorrtllm backend not available on this tritonserver"):
        publish_bundle(bundle, repo, "llama70b", facts=h100, server_url=srv.http_url)
    assert snapshot(repo) == before
    assert not (repo / "llama70b").exists()
    # without a server the rendered repository is written (it loads only where the backend exists)
    done = publish_bundle(bundle, tmp_path / "offline", "llama70b", facts=h100)
    assert done.version == 1 and (tmp_path / "offline" / "llama70b_v1_tensorrt_llm" / "config.pbtxt").is_file()


class ReadyWatch:
    """Polls the model's readiness every 10 ms: when no version of it answered (the drain's window)."""

    def __init__(self, url: str, model: str) -> None:
        from pipeline.triton.control import ModelControl

        self.control, self.model = ModelControl(url, timeout=5.0), model
        self.down_at: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.control.is_ready(self.model):
                self.down_at.append(time.monotonic())
            time.sleep(0.01)

    def __enter__(self) -> ReadyWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    @property
    def window(self) -> float:
        return self.down_at[-1] - self.down_at[0] if self.down_at else 0.0


def test_drain_switch_unloads_first_and_its_downtime_is_measured(server: tuple[TritonServer, Path],
                                                                 bundles: dict[str, Path]) -> None:
    """The strategy for models of which two versions do not fit on the GPUs: the serving version is
    unloaded before the new one loads. The model is unavailable for the new version's load time;
    publish reports that window and a client polling readiness sees the same one."""
    srv, repo = server
    url = srv.http_url
    model = "tiny-drain"
    publish_bundle(bundles["v1"], repo, model, facts=CPU, server_url=url)
    with Load(url, model) as load, ReadyWatch(url, model) as watch:
        res = publish_bundle(bundles["v2"], repo, model, facts=CPU, server_url=url, switch="drain")
    assert res.version == 2 and DirectoryRepository(repo).served_versions(model) == [2]
    downtime = res.seconds["downtime"]
    assert downtime > 0 and watch.down_at, "a drain has a window in which the model is not ready"
    assert watch.window <= downtime + 0.5  # the client's window is inside what publish reports
    assert collapse(load.versions) == [1, 2]  # never both: v1 was gone before v2 loaded
    print(f"drain downtime: publish {downtime:.3f}s, readiness down for {watch.window:.3f}s, "
          f"{len(load.errors)} failed of {len(load.errors) + len(load.versions)} generation requests")
    with ReadyWatch(url, model) as watch:
        back = rollback(repo, model, server_url=url, switch="drain")
    assert back.version == 1 and back.seconds["downtime"] > 0 and watch.down_at


def test_side_by_side_switch_has_no_window(server: tuple[TritonServer, Path], bundles: dict[str, Path]) -> None:
    """The planted counterpart: the same switch side by side never leaves the model unready."""
    srv, repo = server
    url = srv.http_url
    model = "tiny-sbs"
    publish_bundle(bundles["v1"], repo, model, facts=CPU, server_url=url)
    with Load(url, model) as load, ReadyWatch(url, model) as watch:
        res = publish_bundle(bundles["v2"], repo, model, facts=CPU, server_url=url)
    assert res.version == 2 and "downtime" not in res.seconds
    assert watch.down_at == [] and load.errors == [] and collapse(load.versions) == [1, 2]


def test_s3_repository_refuses_drain_and_non_reference_bundles(bundles: dict[str, Path], s3_env: S3Service,
                                                               tmp_path: Path) -> None:
    """Refused before anything is written: drain needs one server to unload through (replicas poll an
    S3 repository), and only the reference layout renders without absolute paths."""
    from pipeline.errors import ServiceError
    from pipeline.repository import RepositoryError
    from tests.integration.repo_targets import own_bucket

    uri = f"s3://{own_bucket(s3_env)}/repo"
    with pytest.raises(ServiceError, match="switch 'drain' unloads a model through one server's API"):
        publish_bundle(bundles["v1"], uri, MODEL, facts=CPU, switch="drain")
    bundle = tensorrt_bundle(tmp_path, recipe("llama70b"))
    with pytest.raises(RepositoryError, match="'tensorrt' bundle into an s3:// Triton repository is not wired"):
        publish_bundle(bundle, uri, "llama70b", facts=facts_for_target("h100", gpus=2))
    assert s3_env.client().list_objects_v2(Bucket=uri.split("/")[2]).get("KeyCount", 0) == 0

    # the CLI takes the URI as it is (a Path would turn s3:// into s3:/)
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    argv = [sys.executable, "-m", "pipeline.cli.__main__", "publish", str(bundles["v1"]), "--model", MODEL,
            "--repository", uri, "--target", "cpu", "--json"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       check=False, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["repository"] == uri
    assert open_repository(uri).served_versions(MODEL) == [1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli.__main__", *args], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_holder(repo: ModelRepository, model: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while repo.lease(model).holder() is None:
        assert time.monotonic() < deadline, f"nobody took the lease on {model}"
        time.sleep(0.05)


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_two_publishes_at_once_one_writes_the_other_waits(target: RepoTarget, bundles: dict[str, Path]) -> None:
    """Two `trtbuild publish` processes on one model: the second starts while the first holds the
    lease; it waits, then publishes the next version. A client streams throughout: 0 failures."""
    repo, url, model = target.uri, target.url, "race"
    publish_bundle(bundles["v1"], repo, model, facts=CPU, server_url=url)
    with Load(url, model) as load:
        first = cli("publish", str(bundles["v2"]), "--model", model, "--repository", repo, "--server-url", url,
                    "--json")
        wait_for_holder(target.repo, model)
        second = cli("publish", str(bundles["v3"]), "--model", model, "--repository", repo, "--server-url", url,
                     "--json")
        out1, err1 = first.communicate(timeout=300)
        out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 0, err2[-2000:]
    assert "waiting for lease on race held by" in err2, err2[-2000:]
    assert (json.loads(out1)["version"], json.loads(out2)["version"]) == (2, 3)
    assert load.errors == [] and collapse(load.versions) == [1, 2, 3]
    assert target.repo.served_versions(model) == [3]
    for v, b in ((1, "v1"), (2, "v2"), (3, "v3")):
        assert target.repo.bundle_id(model, v) == sha256_file(bundles[b] / "manifest.json")
    assert target.repo.lease(model).holder() is None  # released


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_a_writer_that_cannot_get_the_lease_fails_naming_the_holder(target: RepoTarget, bundles: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    repo, url, model = target.uri, target.url, "held"
    publish_bundle(bundles["v1"], repo, model, facts=CPU, server_url=url)
    where = ["s3", *repo.removeprefix("s3://").split("/", 1), model] if target.s3 else ["dir", repo, model]
    holder = Worker(*where, "--hold", "60", "--ttl", "10",
                    env={"TRTBUILD_LEASE_OWNER": "nightly-ci", **(target.s3.env() if target.s3 else {})})
    try:
        got = holder.wait_for("acquired", timeout=60)
        def files() -> dict[str, bytes]:  # the lease's own object changes: the holder renews it
            return {k: v for k, v in target.snapshot().items() if not k.endswith(".trtbuild-lease")}

        before = files()
        for args in (("publish", str(bundles["v2"]), "--model", model), ("rollback", model, "--to", "1")):
            p = cli(*args, "--repository", repo, "--server-url", url, "--lease-timeout", "1")
            _, err = p.communicate(timeout=120)
            assert p.returncode == 1, err[-2000:]
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert "Traceback" not in err and len(lines) <= 3, err[-2000:]
            assert f"nightly-ci@{got['holder']['host']} pid {got['holder']['pid']}" in err, err
            assert files() == before  # nothing written
    finally:
        holder.kill()
    assert served_version(url, model) == 1


# --------------------------------------------------------------------------- kill points
PUBLISH_KILLS = ["publish.version_files", "switch.config", "publish.history", "prune.remove"]


def assert_complete(repo: ModelRepository, model: str) -> None:
    """Every version config.pbtxt names is complete: bundle manifest, version config, every file."""
    served = repo.served_versions(model)
    assert served, f"{model}: config.pbtxt names no version"
    for v in served:
        assert repo.bundle_id(model, v) is not None, f"{model}/{v} is served but has no manifest"
        manifest = json.loads(repo.read_file(model, v, "bundle", "manifest.json") or b"{}")
        for f in manifest["files"]:
            assert repo.exists(model, v, "bundle", *f["path"].split("/")), f"{model}/{v}: {f['path']} missing"


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_sigkill_at_each_write_step(target: RepoTarget, bundles: dict[str, Path], tmp_path: Path) -> None:
    """`trtbuild publish` / `rollback` SIGKILLed at each step that writes (TRTBUILD_FAILPOINT): the
    served version keeps answering (0 failed requests), the repository loads in a fresh
    tritonserver, and a rerun converges."""
    from pipeline.repository import failpoints
    from pipeline.triton.server import locate_tritonserver

    repo, url = target.uri, target.url
    store = open_store(f"file://{tmp_path / 'store'}")
    for b in bundles.values():
        store.put(b)
    common = ["--repository", repo, "--server-url", url]
    cases: list[tuple[str, str, list[str], int]] = []  # model, step, command, version served after the rerun
    for step in PUBLISH_KILLS:
        m = "kp-" + step.replace(".", "-")  # a model per kill point: each starts from a clean state
        for b in ("v1", "v2"):  # v1 is pruned by the killed publish's keep=1 (v2 was serving: kept)
            publish_bundle(bundles[b], repo, m, facts=CPU, server_url=url, store=store.uri)
        cases.append((m, step, ["publish", str(bundles["v3"]), "--model", m, "--keep", "1", "--store", store.uri], 3))
    for b in ("v1", "v2"):
        publish_bundle(bundles[b], repo, "kp-rollback", facts=CPU, server_url=url, store=store.uri)
    cases.append(("kp-rollback", "switch.config", ["rollback", "kp-rollback", "--to", "1"], 1))
    for b in ("v1", "v2", "v3"):
        publish_bundle(bundles[b], repo, "kp-pruned", facts=CPU, server_url=url, store=store.uri, keep=2)
    cases.append(("kp-pruned", "rollback.version_files", ["rollback", "kp-pruned", "--to", "1"], 1))
    if target.s3 is not None:  # a version's objects are many writes on S3: killed half-way through them
        for b in ("v1", "v2"):
            publish_bundle(bundles[b], repo, "kp-half", facts=CPU, server_url=url, store=store.uri)
        cases.append(("kp-half", "publish.version_files@4", ["publish", str(bundles["v3"]), "--model", "kp-half",
                                                             "--store", store.uri], 3))
        for b in ("v1", "v2", "v3"):
            publish_bundle(bundles[b], repo, "kp-half-pruned", facts=CPU, server_url=url, store=store.uri, keep=2)
        cases.append(("kp-half-pruned", "rollback.version_files@4", ["rollback", "kp-half-pruned", "--to", "1"], 1))

    table = []
    for m, step, args, _ in cases:
        before = target.repo.served_versions(m)
        with Load(url, m) as load:
            # a short lease ttl: a killed S3 writer's lease blocks the rerun until it expires
            p = cli(*args, *common, env={failpoints.ENV: step, "TRTBUILD_LEASE_TTL": "3"})
            _, err = p.communicate(timeout=300)
        assert p.returncode == -9, f"{step}: not killed there (rc {p.returncode}): {err[-2000:]}"
        assert load.errors == [], f"{step}: {load.errors[:3]}"
        assert_complete(target.repo, m)
        table.append(f"{target.kind} {m} {step}: served {before} -> {target.repo.served_versions(m)}")

    # what the kills left loads in a fresh tritonserver
    fresh = TritonServer(locate_tritonserver(None), log_path=tmp_path / "fresh.log",
                         env=target.s3.env() if target.s3 else None)
    models = sorted({m for m, *_ in cases})
    with fresh.start(target.repo.triton_uri(), load=models) as srv:
        for m in models:
            assert served_version(srv.http_url, m) in target.repo.served_versions(m)

    # a rerun converges
    for m, step, args, want in cases:
        p = cli(*args, *common)
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"rerun after {step}: {err[-6000:]}"
        assert target.repo.served_versions(m) == [want] and served_version(url, m) == want, step
        assert_complete(target.repo, m)
    print("\n" + "\n".join(table))


def test_tritonserver_dying_in_the_middle_of_a_switch(bundles: dict[str, Path], tmp_path: Path) -> None:
    """tritonserver is SIGKILLed while it loads the new version: publish says so in one error, the
    repository is left serving the previous version (config.pbtxt restored, the new version's
    directory removed), a restarted server loads it, and the rerun publishes."""
    import signal

    from pipeline.triton.server import locate_tritonserver

    repo, model = tmp_path / "repo", "restart"
    repo.mkdir()
    cfg = repo / model / "config.pbtxt"
    first = TritonServer(locate_tritonserver(None), log_path=tmp_path / "first.log")
    with first.start(repo) as srv:
        publish_bundle(bundles["v1"], repo, model, facts=CPU, server_url=srv.http_url)

        def kill_during_load() -> None:  # once config.pbtxt names version 2, the load is under way
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if cfg.is_file() and list(parse_config(cfg.read_text()).version_policy.specific.versions) == [2]:
                    os.killpg(srv.pid or 0, signal.SIGKILL)
                    return
                time.sleep(0.005)

        killer = threading.Thread(target=kill_during_load, daemon=True)
        killer.start()
        with pytest.raises(TrtbuildError) as err:
            publish_bundle(bundles["v2"], repo, model, facts=CPU, server_url=srv.http_url, load_timeout=60)
        killer.join(timeout=30)
    msg = str(err.value)
    assert "switch of model 'restart' to version 2 failed" in msg and "config.pbtxt restored" in msg, msg
    assert "\n" not in msg
    r = DirectoryRepository(repo)
    assert r.served_versions(model) == [1] and r.versions(model) == [1]
    second = TritonServer(locate_tritonserver(None), log_path=tmp_path / "second.log")
    with second.start(repo, load=[model]) as srv:
        assert served_version(srv.http_url, model) == 1
        again = publish_bundle(bundles["v2"], repo, model, facts=CPU, server_url=srv.http_url)
        assert again.version == 2 and served_version(srv.http_url, model) == 2
