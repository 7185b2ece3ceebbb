"""Runner: skip when unchanged, re-run on content change, resume after SIGKILL, atomic outputs,
serialized concurrent runs, gates that fail, and unimplemented stages that never pretend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from pipeline.errors import GateFailed, NotImplementedStageError, UsageError
from pipeline.recipe.load import load_recipe
from pipeline.runner.runner import Runner
from pipeline.runner.stage import Stage, StageContext, StageOutput
from tests.conftest import ROOT
from tests.unit import runner_stages
from tests.unit.runner_stages import Unimplemented

RECIPE = """\
name: rt
source:
  path: src
target:
  gpu: cpu
quantize:
  calibration:
    samples: {samples}
build:
  backend: reference
gates:
  accuracy:
    text_samples: {limit}
release:
  model_name: rt
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.txt").write_text("hello\n")
    write_recipe(tmp_path)
    return tmp_path


def write_recipe(root: Path, samples: int = 3, limit: int = 10_000) -> Path:
    p = root / "r.yaml"
    p.write_text(RECIPE.format(samples=samples, limit=limit))
    return p


def run(root: Path, **kw: object):  # type: ignore[no-untyped-def]
    loaded = load_recipe(root / "r.yaml", env={})
    return Runner(loaded, artifacts=root / "artifacts", stages=runner_stages.stages()).run(**kw)  # type: ignore[arg-type]


def statuses(record) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {s.name: s.status for s in record.stages}


def test_first_run_then_everything_skipped(project: Path) -> None:
    first = run(project)
    assert statuses(first) == {"fetch": "done", "quantize": "done", "accuracy": "done"}
    again = run(project)
    assert statuses(again) == {"fetch": "skipped", "quantize": "skipped", "accuracy": "skipped"}
    assert all("unchanged" in s.reason for s in again.stages)
    assert [s.fingerprint for s in first.stages] == [s.fingerprint for s in again.stages]
    out = Path(again.stage("quantize").outputs["big"])
    assert out.read_text() == "HELLO\n" * 3
    # a schema-versioned run record per run
    records = sorted((project / "artifacts" / "runs").glob("*.json"))
    assert len(records) == 2
    data = json.loads(records[-1].read_text())
    assert data["schema_version"] == 1 and data["status"] == "succeeded"


def test_content_change_under_same_path_reruns(project: Path) -> None:
    run(project)
    (project / "src" / "data.txt").write_text("changed\n")
    rec = run(project)
    assert statuses(rec) == {"fetch": "done", "quantize": "done", "accuracy": "done"}
    assert "source 'source' changed" in rec.stage("fetch").reason
    assert "input 'fetch' changed" in rec.stage("quantize").reason
    assert Path(rec.stage("quantize").outputs["big"]).read_text() == "CHANGED\n" * 3


def test_section_change_reruns_that_stage_only(project: Path) -> None:
    run(project)
    write_recipe(project, samples=5)
    rec = run(project)
    assert statuses(rec)["fetch"] == "skipped"
    assert rec.stage("quantize").status == "done"
    assert "samples: 3 -> 5" in rec.stage("quantize").reason


def test_plan_says_why(project: Path) -> None:
    loaded = load_recipe(project / "r.yaml", env={})
    runner = Runner(loaded, artifacts=project / "artifacts", stages=runner_stages.stages())
    plan = runner.plan()
    assert [(p.name, p.status) for p in plan] == [
        ("fetch", "stale"), ("quantize", "stale"), ("accuracy", "stale")]
    assert plan[1].reason == "will run after 'fetch'" and plan[1].fingerprint is None
    run(project)
    write_recipe(project, samples=4)
    loaded = load_recipe(project / "r.yaml", env={})
    plan = Runner(loaded, artifacts=project / "artifacts", stages=runner_stages.stages()).plan()
    assert [(p.name, p.status) for p in plan][:2] == [("fetch", "cached"), ("quantize", "stale")]
    assert "samples: 3 -> 4" in plan[1].reason


def test_force_and_from(project: Path) -> None:
    run(project)
    rec = run(project, from_stage="quantize")
    assert statuses(rec) == {"fetch": "skipped", "quantize": "done", "accuracy": "done"}
    rec = run(project, force=True, until="fetch")
    assert statuses(rec) == {"fetch": "done", "quantize": "not-run", "accuracy": "not-run"}
    with pytest.raises(UsageError, match="unknown stage"):
        run(project, from_stage="nope")


def test_from_requires_cached_upstream(project: Path) -> None:
    with pytest.raises(UsageError, match="stage 'fetch' has no finished output"):
        run(project, from_stage="quantize")


def test_gate_failure_raises_and_is_recorded(project: Path) -> None:
    write_recipe(project, limit=5)
    with pytest.raises(GateFailed, match="gate 'accuracy' failed: size 18 >= 5"):
        run(project)
    with pytest.raises(GateFailed):  # cached verdict: still failing, not silently passing
        run(project)
    rec = json.loads(max((project / "artifacts/runs").glob("*.json"), key=os.path.getmtime).read_text())
    assert rec["status"] == "gate-failed"


def test_rerun_gate_reports_its_new_verdict(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--from / --force re-measure a gate whose fingerprint did not change: the new verdict counts."""
    assert run(project).stage("accuracy").passed is True
    monkeypatch.setenv("TEST_GATE_LIMIT", "5")
    with pytest.raises(GateFailed, match="size 18 >= 5"):
        run(project, from_stage="accuracy")
    with pytest.raises(GateFailed):  # and it is what the cache now holds
        run(project)
    monkeypatch.delenv("TEST_GATE_LIMIT")
    assert run(project, force=True).stage("accuracy").passed is True
    assert not list((project / "artifacts" / "cache" / "accuracy").glob(".tmp-*"))


def test_unimplemented_stage_fails_clearly(project: Path) -> None:
    loaded = load_recipe(project / "r.yaml", env={})
    runner = Runner(loaded, artifacts=project / "artifacts",
                    stages=[*runner_stages.stages(), Unimplemented()])
    with pytest.raises(NotImplementedStageError, match="stage 'release': not implemented yet"):
        runner.run()
    rec = json.loads(max((project / "artifacts/runs").glob("*.json"), key=os.path.getmtime).read_text())
    assert rec["status"] == "failed"
    assert {s["name"]: s["status"] for s in rec["stages"]}["release"] == "failed"
    assert not list((project / "artifacts/cache/release").glob("*")), "nothing cached for a failed stage"


def _start(project: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.unit.runner_stages", str(project / "r.yaml"),
         str(project / "artifacts")],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_sigkill_mid_stage(project: Path) -> None:
    write_recipe(project, samples=50)
    log = project / "events.log"
    proc = _start(project, {"TEST_QUANT_SLEEP": "0.05", "TEST_EVENT_LOG": str(log)})
    deadline = time.monotonic() + 30
    while "quantize-start" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    time.sleep(0.5)  # mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    qdir = project / "artifacts/cache/quantize"
    # nothing half-written is visible under a final name: only the .tmp- work dir exists
    assert [p.name.startswith(".tmp-") for p in qdir.iterdir()] == [True]
    assert not list(qdir.glob("[!.]*"))
    rec = run(project)
    assert statuses(rec) == {"fetch": "skipped", "quantize": "done", "accuracy": "done"}
    assert Path(rec.stage("quantize").outputs["big"]).read_text() == "HELLO\n" * 50
    assert not list(qdir.glob(".tmp-*")), "the dead run's work dir was cleaned"
    killed = [json.loads(p.read_text()) for p in (project / "artifacts/runs").glob("*.json")]
    assert any(r["status"] == "running" for r in killed), "the killed run left its record"


def test_concurrent_runs_are_serialized(project: Path) -> None:
    log = project / "events.log"
    env = {"TEST_FETCH_SLEEP": "1.0", "TEST_EVENT_LOG": str(log)}
    a, b = _start(project, env), _start(project, env)
    assert a.wait(timeout=60) == 0 and b.wait(timeout=60) == 0
    events = [line.split() for line in log.read_text().splitlines()]
    # exactly one run did the work; the other waited for the lock and then found it cached
    assert [e[0] for e in events] == ["fetch-start", "fetch-end", "quantize-start", "quantize-end"]
    waited = (a.stderr.read() if a.stderr else b"") + (b.stderr.read() if b.stderr else b"")
    assert b"Traceback" not in waited


class _SeesTheRun(Stage):
    """A last stage that keeps what its context says about the run (as release reads it for MLflow)."""

    name = "release"
    inputs = ("accuracy",)
    seen: ClassVar[list[StageContext]] = []

    def section(self, loaded: object) -> dict[str, object]:
        return {}

    def run(self, ctx: StageContext) -> StageOutput:
        self.seen.append(ctx)
        return StageOutput()


def test_a_stage_sees_every_earlier_result_and_the_run_record(project: Path) -> None:
    first = run(project)
    write_recipe(project, samples=5)  # quantize and accuracy run again, fetch is cached
    loaded = load_recipe(project / "r.yaml", env={})
    stages = [*runner_stages.stages(), _SeesTheRun()]
    record = Runner(loaded, artifacts=project / "artifacts", stages=stages).run()
    ctx = _SeesTheRun.seen[-1]
    assert list(ctx.inputs) == ["accuracy"]
    assert list(ctx.earlier) == ["fetch", "quantize", "accuracy"]
    assert ctx.run is record and ctx.run.stage("fetch").status == "skipped"
    # a cached stage keeps the time of the run that made it
    assert ctx.earlier["fetch"].seconds == first.stage("fetch").seconds > 0


class RecordsRefusal(Unimplemented):
    """A release that records a refusal (as the real one does in MLflow), or fails to."""

    seen: ClassVar[list[bool | None]] = []
    broken: ClassVar[bool] = False

    def gates_failed(self, ctx: StageContext) -> tuple[str, dict[str, object]] | None:
        from pipeline.errors import RegistryError

        if self.broken:
            raise RegistryError("MLflow server http://127.0.0.1:9 is not reachable")
        self.seen.append(ctx.inputs["accuracy"].passed)
        return "refusal recorded", {"run_id": f"r{len(self.seen)}"}


@pytest.mark.parametrize("broken", [False, True])
def test_failed_gate_lets_the_release_record_the_refusal(project: Path, broken: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed gate: release's run() never runs, its gates_failed() does (fresh or cached verdict);
    a registry that is down is reported and the gate failure stays the run's error."""
    monkeypatch.setattr(RecordsRefusal, "seen", [])
    monkeypatch.setattr(RecordsRefusal, "broken", broken)
    write_recipe(project, limit=5)
    loaded = load_recipe(project / "r.yaml", env={})
    for _ in range(2):  # the second run has the failing verdict from the cache
        runner = Runner(loaded, artifacts=project / "artifacts", stages=[*runner_stages.stages(), RecordsRefusal()])
        with pytest.raises(GateFailed, match="size 18 >= 5"):
            runner.run()
        rec = runner.last_record
        assert rec is not None and rec.stage("release").status == "not-run"
        assert rec.stage("release").reason == "a gate failed"
    assert RecordsRefusal.seen == ([] if broken else [False, False])
    assert rec.stage("release").summary == ({} if broken else {"run_id": "r2"})
    # a passing gate: run() is what runs (Unimplemented's), gates_failed() is not called
    write_recipe(project, limit=10_000)
    runner = Runner(load_recipe(project / "r.yaml", env={}), artifacts=project / "artifacts",
                    stages=[*runner_stages.stages(), RecordsRefusal()])
    with pytest.raises(NotImplementedStageError):
        runner.run()
    assert RecordsRefusal.seen == ([] if broken else [False, False])
