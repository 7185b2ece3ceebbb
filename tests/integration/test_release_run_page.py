"""The release stage's MLflow run page: stage times of the whole pipeline run as metrics, and a
description with each gate's verdict, criterion lines, workloads and links to the gate reports.

The release stage runs on fake earlier-stage results (no model, no server): MLflow over sqlite."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from pipeline.bundle import write_manifest
from pipeline.recipe.load import load_recipe
from pipeline.registry import MlflowRegistry
from pipeline.registry.run_page import NOTE_TAG
from pipeline.runner.events import NullReporter
from pipeline.runner.records import RunRecord, StageRecord
from pipeline.runner.stage import STAGE_ORDER, StageContext, StageResult
from pipeline.stages.release import ReleaseStage
from tests.integration.test_registry_mlflow import sqlite_uri, template_db  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

SECONDS = {"fetch": 12.5, "quantize": 301.25, "build": 95.0, "accuracy": 140.0, "throughput": 88.75}


def _result(tmp_path: Path, stage: str, files: dict[str, str | bytes], *, passed: bool | None = None,
            outputs: dict[str, str] | None = None, summary: dict[str, object] | None = None) -> StageResult:
    d = tmp_path / "cache" / stage
    d.mkdir(parents=True)
    for name, content in files.items():
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return StageResult(stage=stage, fingerprint=f"fp-{stage}", digest=f"d-{stage}", dir=d,
                       outputs={k: str(d / v) for k, v in (outputs or {}).items()}, summary=summary or {},
                       passed=passed, seconds=SECONDS[stage])


def _accuracy(tmp_path: Path, passed: bool) -> StageResult:
    checks = [
        {"name": "perplexity ratio", "value": 1.012, "threshold": 1.05, "op": "<=", "passed": True, "detail": ""},
        {"name": "gsm8k accuracy drop (points)", "value": 0.4 if passed else 6.2, "threshold": 1.5, "op": "<=",
         "passed": passed, "detail": "n=200"},
    ]
    report = {"passed": passed, "checks": checks, "failed": [], "notes": [],
              "teacher_forced": {"tokens": 4096}, "tasks": [{"name": "gsm8k", "kind": "lm-eval", "n": 200}]}
    return _result(tmp_path, "accuracy", {"accuracy.json": json.dumps(report), "accuracy.md": "## Accuracy gate\n"},
                   passed=passed, outputs={"report": "accuracy.json", "markdown": "accuracy.md"},
                   summary={"failed": [], "metrics": {"gsm8k_accuracy": 61.0}})


def _throughput(tmp_path: Path) -> StageResult:
    criteria = [{"workload": "chat", "concurrency": 4, "metric": "output_tok_s", "candidate": 812.0,
                 "baseline": 400.0, "ratio": 2.03, "bound": "ratio >= 1.2", "passed": True}]
    workloads = [{"name": "chat", "kind": "unique", "input_len": 128, "output_len": 64, "num_prompts": 64,
                  "concurrency": [1, 4]}]
    report = {"passed": True, "criteria": criteria, "workloads": workloads}
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    return _result(tmp_path, "throughput", {"throughput.json": json.dumps(report), "throughput.md": "## Throughput\n",
                                            "throughput.png": png, "ttft_cdf.png": png},
                   passed=True, outputs={"report": "throughput.json", "markdown": "throughput.md"},
                   summary={"failed": [], "metrics": {"candidate.chat.c4.output_tok_s": 812.0}})


def _context(tmp_path: Path, uri: str, *, accuracy_passed: bool = True, gates: bool = True) -> StageContext:
    (tmp_path / "src").mkdir()
    recipe = {
        "name": "tiny-page", "source": {"path": "src", "dtype": "float32"}, "target": {"gpu": "cpu"},
        "quantize": {"algo": "fp8", "kv_cache": "fp8"}, "build": {"backend": "reference"},
        "release": {"model_name": "tiny-page", "store": f"file://{tmp_path / 'store'}", "registry": uri},
        "publish": {"repository": str(tmp_path / "repo"), "model_name": "tiny", "server_url": ""},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(tmp_path / "r.yaml")
    build = _result(tmp_path, "build", {})
    bundle = build.dir / "bundle"
    bundle.mkdir()
    (bundle / "weights.bin").write_bytes(b"\x01" * 64)
    bundle_id = write_manifest(bundle, name="tiny-page", backend="reference", provenance={"git_commit": "abc"},
                               compatibility={"backend": "reference"}, runtime={})
    build.outputs, build.summary = {"bundle": str(bundle)}, {"bundle_id": bundle_id}
    earlier = {"fetch": _result(tmp_path, "fetch", {}), "quantize": _result(tmp_path, "quantize", {}), "build": build,
               "accuracy": _accuracy(tmp_path, accuracy_passed), "throughput": _throughput(tmp_path)}
    if not gates:
        for name in ("accuracy", "throughput"):
            earlier[name] = StageResult(stage=name, fingerprint="disabled", digest="disabled", dir=Path(), outputs={})
    record = RunRecord(recipe=str(tmp_path / "r.yaml"), recipe_name="tiny-page", recipe_digest=loaded.digest,
                       stages=[StageRecord(n) for n in STAGE_ORDER], started=time.time() - 700)
    for name in earlier:
        record.stage(name).status = "skipped" if name == "quantize" else "done"
    inputs = {k: earlier[k] for k in ReleaseStage.inputs if k in earlier}
    return StageContext(loaded=loaded, workdir=tmp_path / "work", inputs=inputs,
                        artifacts=tmp_path / "artifacts", reporter=NullReporter(), earlier=earlier, run=record)


def _release(tmp_path: Path, uri: str, *, accuracy_passed: bool = True,
             gates: bool = True) -> tuple[MlflowRegistry, str]:
    out = ReleaseStage().run(_context(tmp_path, uri, accuracy_passed=accuracy_passed, gates=gates))
    return MlflowRegistry(uri), str(out.summary["run_id"])


def test_run_page_has_stage_times_and_gate_description(tmp_path: Path, sqlite_uri: str) -> None:  # noqa: F811
    registry, run_id = _release(tmp_path, sqlite_uri, accuracy_passed=True)
    run = registry.client.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    for name, seconds in SECONDS.items():
        assert metrics[f"stage.{name}.seconds"] == seconds
    assert metrics["stage.total.seconds"] == sum(SECONDS.values())
    assert tags["stage.quantize.cached"] == "true" and "stage.build.cached" not in tags
    assert {"trtbuild.pipeline.started", "trtbuild.pipeline.ended", "trtbuild.run_id"} <= set(tags)
    # the run spans the pipeline, not only the release
    assert (run.info.end_time - run.info.start_time) / 1000 >= 699
    note = tags[NOTE_TAG]
    assert "## Accuracy gate: PASS" in note and "## Throughput gate: PASS" in note
    assert "- PASS: perplexity ratio = 1.012 (must be <= 1.05)" in note
    assert "- PASS: chat@4 output_tok_s: candidate 812, baseline 400, ratio 2.030 (must be ratio >= 1.2)" in note
    assert "chat (unique, 64 prompts, input 128 / output 64 tokens, concurrency 1, 4)" in note
    assert "gsm8k (lm-eval, n=200)" in note
    assert "- quantize: 301.2 s (cached: time of the run that made it)" in note and "- build: 95.0 s\n" in note
    assert "\n\n**Released** as `tiny-page` version 1 (alias `candidate`): accuracy PASS, throughput PASS.\n" in note
    assert str(run.data.tags["bundle_digest"]) in note and "file://" in note
    for artifact in ("gates/accuracy.md", "gates/throughput.md", "gates/throughput.png", "gates/ttft_cdf.png"):
        assert f"[{artifact}](#/experiments/{run.info.experiment_id}/runs/{run_id}/artifactPath/{artifact})" in note
    assert f"![gates/throughput.png](get-artifact?path=gates%2Fthroughput.png&run_uuid={run_id})" in note
    logged = {f.path for f in registry.client.list_artifacts(run_id, "gates")}
    assert {"gates/throughput.png", "gates/ttft_cdf.png", "gates/accuracy.md"} <= logged
    # the version's page says what it is and links back to this run
    mv = registry.client.get_model_version("tiny-page", "1")
    assert mv.run_id == run_id
    assert mv.description.startswith("**tiny-page**: accuracy PASS, throughput PASS\n")
    assert f"- bundle: `{run.data.tags['bundle_digest']}`" in mv.description
    assert "- accuracy gate: PASS (2 of 2 criteria met)" in mv.description
    assert "- git commit: `abc`" in mv.description
    assert f"[the release run](#/experiments/{run.info.experiment_id}/runs/{run_id})" in mv.description


def test_a_failing_gate_shows_fail(tmp_path: Path, sqlite_uri: str) -> None:  # noqa: F811
    registry, run_id = _release(tmp_path, sqlite_uri, accuracy_passed=False)
    note = registry.client.get_run(run_id).data.tags[NOTE_TAG]
    assert note.startswith("# tiny-page: gates FAIL")
    assert "## Accuracy gate: FAIL" in note
    assert "- **FAIL**: gsm8k accuracy drop (points) = 6.2 (must be <= 1.5) n=200" in note
    assert "## Throughput gate: PASS" in note


def test_disabled_gates_log_nothing_from_the_cwd(tmp_path: Path, sqlite_uri: str,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "accuracy.md").write_text("not this run's\n")
    (cwd / "plot.png").write_bytes(b"\x89PNG")
    monkeypatch.chdir(cwd)
    registry, run_id = _release(tmp_path, sqlite_uri, gates=False)
    run = registry.client.get_run(run_id)
    assert run.data.tags[NOTE_TAG].startswith("# tiny-page: no gates enabled")
    assert "gates" not in {f.path for f in registry.client.list_artifacts(run_id)}
    assert "stage.accuracy.seconds" not in run.data.metrics and "stage.build.seconds" in run.data.metrics


def test_a_failed_gate_records_a_failed_run_and_no_version(tmp_path: Path, sqlite_uri: str) -> None:  # noqa: F811
    """What the runner calls instead of the release when a gate failed: the reviewer finds the FAIL
    verdict, the criteria and the reports in MLflow; nothing is stored or registered."""
    ctx = _context(tmp_path, sqlite_uri, accuracy_passed=False)
    line, summary = ReleaseStage().gates_failed(ctx) or ("", {})
    run_id = str(summary["run_id"])
    assert summary["registered"] is False and run_id in line and "no version of tiny-page" in line
    registry = MlflowRegistry(sqlite_uri)
    run = registry.client.get_run(run_id)
    assert run.info.status == "FAILED"
    note = run.data.tags[NOTE_TAG]
    assert note.startswith("# tiny-page: gates FAIL\n\n**Not released**: accuracy FAIL, throughput PASS.")
    assert "- **FAIL**: gsm8k accuracy drop (points) = 6.2 (must be <= 1.5) n=200" in note
    assert "- store: `not stored`" in note and "- registered: nothing" in note
    assert run.data.metrics["stage.total.seconds"] == sum(SECONDS.values())
    logged = {f.path for f in registry.client.list_artifacts(run_id, "gates")}
    assert {"gates/accuracy.md", "gates/accuracy.json", "gates/throughput.png"} <= logged
    assert registry.client.search_model_versions("name='tiny-page'") == []
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("manifest.json"))
    # re-running the same failed pipeline (verdicts from the cache) does not add a second run
    assert ReleaseStage().gates_failed(ctx) == (line, summary)
    assert len(registry.client.search_runs([run.info.experiment_id])) == 1
