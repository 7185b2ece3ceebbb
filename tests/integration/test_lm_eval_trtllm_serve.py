"""The accuracy gate's lm-eval side against trtllm-serve, which cannot run here: a stand-in
(tests/data/trtllm/trtllm-serve) parses argv strictly against the recorded 1.2 flags and serves the
recorded behaviour (no prompt logprobs). Real lm-eval talks to it; what trtbuild sends is checked."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.bundle import write_manifest
from pipeline.errors import StageError
from pipeline.eval import endpoints, lmeval
from pipeline.recipe.load import load_recipe
from tests.conftest import ROOT
from tests.tiny_model import make_tokenizer

pytestmark = pytest.mark.integration
STANDIN = ROOT / "tests/data/trtllm/trtllm-serve"
FLAGS = json.loads((ROOT / "tests/data/upstream/trtllm_serve.json").read_text())

RECIPE = """\
name: g
source: {{repo: org/m, revision: {sha}}}
target: {{gpu: h100, tensor_parallel: 2}}
build: {{backend: tensorrt, max_batch_size: 8, max_seq_len: 512, max_num_tokens: 1024}}
gates:
  accuracy:
    tasks:
      - {{name: copy, kind: lm-eval, data: trtbuild_copy, metric: exact_match, limit: 6}}
    lm_eval:
      candidate: {{kind: trtllm-serve, command: [{py}, {standin}], start_timeout_s: 60}}
release: {{model_name: g}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("trtserve")
    bundle = d / "bundle"
    (bundle / "engine").mkdir(parents=True)
    (bundle / "engine" / "config.json").write_text("{}")
    for rank in (0, 1):
        (bundle / "engine" / f"rank{rank}.engine").write_bytes(b"stand-in")
    make_tokenizer().save_pretrained(bundle / "tokenizer")
    write_manifest(bundle, name="g", backend="tensorrt", provenance={}, compatibility={},
                   runtime={"kind": "tensorrt", "engine": "engine", "tokenizer": "tokenizer"})
    source = d / "source"
    make_tokenizer().save_pretrained(source)
    (d / "r.yaml").write_text(RECIPE.format(sha="a" * 40, py=sys.executable, standin=STANDIN))
    recipe = load_recipe(d / "r.yaml", env={}).recipe
    return {"d": d, "bundle": bundle, "source": source, "recipe": recipe}


def test_command_line_matches_the_recorded_interface(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    argv_file = served["d"] / "argv.json"
    monkeypatch.setenv("TRTLLM_STANDIN_ARGV", str(argv_file))
    r = served["recipe"]
    with endpoints.serve("candidate", r.gates.accuracy.lm_eval.candidate, r, source=served["source"],
                         bundle=served["bundle"], workdir=served["d"]) as ep:
        # 1.2 has no --served_model_name: the id is read back from /v1/models (the engine dir's name)
        assert ep.model == "engine"
    argv = json.loads(argv_file.read_text())
    assert argv[0] == str(served["bundle"] / "engine")
    flags = {a for a in argv[1:] if a.startswith("--")}
    assert flags <= set(FLAGS["flags"]), flags - set(FLAGS["flags"])
    opt = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    assert opt["--backend"] == "tensorrt" and opt["--tokenizer"] == str(served["bundle"] / "tokenizer")
    assert (opt["--tp_size"], opt["--max_batch_size"], opt["--max_seq_len"]) == ("2", "8", "512")
    assert opt["--host"] == "127.0.0.1"


def test_generation_task_runs_and_loglikelihood_task_is_refused(served: dict[str, Any]) -> None:
    r = served["recipe"]
    settings = lmeval.Settings(python=sys.executable, num_concurrent=2, max_length=512, run_timeout_s=300)
    with endpoints.serve("candidate", r.gates.accuracy.lm_eval.candidate, r, source=served["source"],
                         bundle=served["bundle"], workdir=served["d"]) as ep:
        assert lmeval.probe_prompt_logprobs(ep) is not None
        copy = lmeval.LmEvalTask("copy", "trtbuild_copy", "exact_match", limit=6)
        side = lmeval.run_side(settings, [copy], ep, served["d"] / "out", label="candidate")
        assert len(side.samples["copy"]) == 6
        assert side.output_types == {"trtbuild_copy": "generate_until"}
        assert all(s.value == 1.0 for s in side.samples["copy"].values())  # the stand-in copies the word
        mc = lmeval.LmEvalTask("mc", "trtbuild_mc_facts", "acc", limit=4)
        with pytest.raises(StageError, match="no prompt logprobs") as e:
            lmeval.run_side(settings, [mc], ep, served["d"] / "out-mc", label="candidate")
        assert "generate_until" in (e.value.hint or "")


def test_missing_trtllm_serve_is_one_line(served: dict[str, Any], tmp_path: Path) -> None:
    from pipeline.errors import ServiceError

    r = served["recipe"]
    srv = r.gates.accuracy.lm_eval.candidate.model_copy(update={"command": [str(tmp_path / "trtllm-serve")]})
    with pytest.raises(ServiceError, match="not found"), endpoints.serve(
            "candidate", srv, r, source=served["source"], bundle=served["bundle"], workdir=tmp_path):
        pass


def test_throughput_candidate_through_trtllm_serve(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a tensorrt build the throughput gate's candidate defaults to trtllm-serve: started with the
    recorded flags on the engine, driven by the same streaming client as the vLLM baseline."""
    import asyncio
    import contextlib
    from types import SimpleNamespace

    from pipeline.bench.harness import run_point
    from pipeline.bundle import read_manifest
    from pipeline.stages.throughput import ThroughputStage, candidate_kind

    r = served["recipe"].model_copy(deep=True)
    r.gates.throughput.candidate.command = [sys.executable, str(STANDIN)]
    assert candidate_kind(r) == "trtllm-serve"
    argv_file = served["d"] / "tput-argv.json"
    monkeypatch.setenv("TRTLLM_STANDIN_ARGV", str(argv_file))
    ctx = SimpleNamespace(recipe=r, workdir=served["d"],
                          inputs={"build": SimpleNamespace(outputs={"bundle": str(served["bundle"])},
                                                           summary={"bundle_id": read_manifest(served["bundle"])[1]})},
                          progress=lambda *_a, **_k: contextlib.nullcontext())
    with ThroughputStage()._candidate(ctx, "trtllm-serve", served["source"]) as ep:  # type: ignore[arg-type]
        point = asyncio.run(run_point(ep, ["Input: apple\nOutput:"] * 4, output_len=8, concurrency=2,
                                      workload="w", warmup=1, slo_ttft=2.0, slo_tpot=0.5))
    assert point.failed == 0 and point.output_tokens == 4 * 8, point.to_json()
    argv = json.loads(argv_file.read_text())
    assert argv[0] == str(served["bundle"] / "engine") and argv[argv.index("--backend") + 1] == "tensorrt"


def test_trtllm_serve_in_a_container_is_stopped_by_name(served: dict[str, Any], tmp_path: Path) -> None:
    """As recipes/base/hopper-trtllm.yaml runs it: `docker run ... IMAGE trtllm-serve`, named and
    removed by name. (The stand-in's aiohttp, like trtllm-serve's uvicorn, handles SIGTERM, so as PID 1
    it would stop anyway; tests/unit/test_container.py has the container that does not.)"""
    from tests import fake_docker

    docker = fake_docker.install(tmp_path)
    r = served["recipe"]
    srv = r.gates.accuracy.lm_eval.candidate.model_copy(update={"command": [
        str(docker.exe), "run", "--rm", "--network", "host", "img", sys.executable, str(STANDIN)]})
    try:
        with endpoints.serve("candidate", srv, r, source=served["source"], bundle=served["bundle"],
                             workdir=tmp_path) as ep:
            assert ep.model == "engine"
            (name, pid), = docker.containers().items()
        deadline = time.monotonic() + 10
        while fake_docker.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not fake_docker.alive(pid), "trtllm-serve's container outlived the gate"
        assert name.startswith("trtbuild-trtllm-serve-") and ["rm", "-f", name] in docker.calls()
    finally:
        docker.kill_all()
