"""Publish, serve and roll back reference bundles through a real tritonserver, under load."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.bundle import facts_for_target, write_manifest
from pipeline.errors import CompatibilityError, IntegrityError, TrtbuildError
from pipeline.quant.calibration import load_calibration
from pipeline.quant.quantize import quantize_checkpoint
from pipeline.triton.client import LLMClient
from pipeline.triton.publish import publish_bundle, rollback
from pipeline.triton.repository import ModelDir, parse_config
from pipeline.triton.server import TritonServer, locate_tritonserver
from pipeline.util.hashing import iter_content_files
from tests.tiny_model import save_tiny_checkpoint

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
    return {"v1": make_bundle(root, 1), "v2": make_bundle(root, 2), "v3": make_bundle(root, 3)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    repo = tmp_path_factory.mktemp("repo")
    srv = TritonServer(locate_tritonserver(None), log_path=repo.parent / "triton.log")
    with srv.start(repo):
        yield srv, repo


class Load:
    """A client sending requests continuously; records answering versions and failures."""

    def __init__(self, url: str) -> None:
        self.client = LLMClient(url, timeout=60)
        self.versions: list[int | None] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                g = self.client.stream(MODEL, "The object", max_tokens=3, ignore_eos=True)
                self.versions.append(g.model_version)
            except TrtbuildError as e:
                self.errors.append(str(e))

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


def test_publish_switch_rollback_zero_failures(server: tuple[TritonServer, Path], bundles: dict[str, Path]) -> None:
    srv, repo = server
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
    assert ModelDir(repo / MODEL).served_versions() == [1]
    cfg = parse_config((repo / MODEL / "config.pbtxt").read_text())
    assert "${" not in str(cfg) and cfg.model_transaction_policy.decoupled


def snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in iter_content_files(repo)}


def test_broken_versions_are_refused_and_nothing_changes(server: tuple[TritonServer, Path],
                                                         bundles: dict[str, Path], tmp_path: Path) -> None:
    srv, repo = server
    url = srv.http_url
    if not (repo / MODEL / "config.pbtxt").exists():
        publish_bundle(bundles["v1"], repo, MODEL, facts=CPU, server_url=url)
    before = snapshot(repo)
    serving = ModelDir(repo / MODEL).served_versions()

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
    assert snapshot(repo) == before

    # a bundle for another target is refused with the reason
    gpu = tmp_path / "gpu"
    shutil.copytree(bundles["v3"], gpu)
    (gpu / "manifest.json").unlink()
    write_manifest(gpu, name="tiny", backend="tensorrt", provenance={}, runtime={},
                   compatibility={"backend": "tensorrt", "gpu": "h100", "sm": 90, "tensor_parallel": 1,
                                  "pipeline_parallel": 1})
    with pytest.raises(CompatibilityError, match="runtime has no NVIDIA GPU"):
        publish_bundle(gpu, repo, MODEL, facts=CPU, server_url=url)
    assert snapshot(repo) == before
