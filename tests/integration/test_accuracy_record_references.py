"""`run --record-references` through the runner and the real accuracy stage on a tiny model.

The recording run writes the baseline's task scores, is judged against the file as it was
before (never against what it just wrote), and the next run re-runs the gate with them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.bundle import write_manifest
from pipeline.recipe.load import LoadedRecipe, load_recipe
from pipeline.runner.events import NullReporter
from pipeline.runner.runner import Runner
from pipeline.runner.stage import Stage, StageContext, StageOutput
from pipeline.stages.accuracy import AccuracyStage
from tests.conftest import ROOT
from tests.tiny_model import save_tiny_checkpoint

pytestmark = pytest.mark.integration
KEY = "tiny/fp8/fp8"


class TinyFetch(Stage):
    name = "fetch"

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {"tiny": 1}

    def run(self, ctx: StageContext) -> StageOutput:
        save_tiny_checkpoint(ctx.workdir / "checkpoint", peaky=4.0)
        return StageOutput(outputs={"checkpoint": "checkpoint"})


class TinyBuild(Stage):
    """A reference bundle of the unquantized checkpoint: the gate's plumbing, not its numbers, is tested."""

    name = "build"
    inputs = ("fetch",)

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {"tiny": 1}

    def run(self, ctx: StageContext) -> StageOutput:
        b = ctx.workdir / "bundle"
        shutil.copytree(ctx.inputs["fetch"].outputs["checkpoint"], b / "checkpoint")
        write_manifest(b, name="tiny", backend="reference", provenance={}, compatibility={"backend": "reference"},
                       runtime={"kind": "reference", "checkpoint": "checkpoint", "dtype": "float32",
                                "max_batch_size": 8, "max_seq_len": 512, "max_num_tokens": 1024})
        return StageOutput(outputs={"bundle": "bundle"})


class Messages(NullReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.started: dict[str, str] = {}

    def info(self, message: str) -> None:
        self.lines.append(message)

    def stage_started(self, stage: str, fingerprint: str, why: str) -> None:
        self.started[stage] = why


def write_recipe(d: Path, refs: Path, *, tasks: bool = True) -> Path:
    recipe = {
        "name": "tiny-acc", "source": {"path": "."}, "target": {"gpu": "cpu"},
        "quantize": {"algo": "fp8", "kv_cache": "fp8"},
        "build": {"backend": "reference", "max_batch_size": 8, "max_seq_len": 512, "max_num_tokens": 1024},
        "gates": {"accuracy": {
            "text_samples": 4, "text_seq_len": 32, "references": str(refs), "max_ppl_ratio": 1.5,
            "tasks": [{"name": "copy", "kind": "exact-match", "data": "builtin:copy", "limit": 6},
                      {"name": "mc-facts", "kind": "multiple-choice", "data": "builtin:mc-facts", "limit": 6}]
            if tasks else []}},
        "release": {"model_name": "tiny", "store": "file://store", "registry": "sqlite:///m.db"},
    }
    p = d / "recipe.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


def run(recipe: Path, artifacts: Path, **options: Any) -> tuple[Messages, dict[str, Any]]:
    msgs = Messages()
    runner = Runner(load_recipe(recipe), artifacts=artifacts, stages=[TinyFetch(), TinyBuild(), AccuracyStage()],
                    reporter=msgs, options=options)
    record = runner.run()
    acc = next(s for s in record.stages if s.name == "accuracy")
    report = json.loads(Path(acc.outputs["report"]).read_text())
    return msgs, {"status": acc.status, "reason": acc.reason, "report": report}


def test_record_then_apply_then_unchanged_then_replaced(tmp_path: Path) -> None:
    refs = tmp_path / "refs.yaml"
    recipe = write_recipe(tmp_path, refs)
    art = tmp_path / "artifacts"

    msgs, first = run(recipe, art, record_references=True)
    data = yaml.safe_load(refs.read_text())
    assert set(data[KEY]) == {"copy", "mc-facts"}
    entry = data[KEY]["copy"]
    assert entry["n"] == 6 and entry["sigma"] == 50.0 and entry["measured"] == "baseline" and entry["date"]
    assert any("new reference" in m for m in msgs.lines)
    # judged against the file as it was (empty): no check compares the run with what it wrote
    names = [c["name"] for c in first["report"]["checks"]]
    assert not any("vs reference" in n for n in names)
    assert any("apply from the next run" in n for n in first["report"]["notes"])
    baseline = {t["name"]: t["baseline"] for t in first["report"]["tasks"]}
    assert entry["accuracy"] == round(baseline["copy"], 3)

    msgs, second = run(recipe, art)
    assert second["status"] == "done", "a recorded reference changes the gate's fingerprint"
    assert "references" in msgs.started["accuracy"]
    assert {c["name"] for c in second["report"]["checks"]} >= {"copy vs reference", "mc-facts vs reference"}

    _, third = run(recipe, art)
    assert third["status"] == "skipped"

    msgs, fourth = run(recipe, art, record_references=True)
    assert fourth["status"] == "done" and "--record-references" in msgs.started["accuracy"]
    assert sum(m.startswith("references ") and m.endswith(")") and "unchanged" in m for m in msgs.lines) == 2

    data[KEY]["copy"]["accuracy"] = 12.5  # someone's stale value: replacing it must be said
    refs.write_text(yaml.safe_dump(data))
    msgs, _ = run(recipe, art, record_references=True)
    assert any(f"{KEY} copy: REPLACED 12.5" in m and "->" in m for m in msgs.lines), msgs.lines


@pytest.mark.parametrize(("tasks", "extra", "says"), [
    (False, [], "gates.accuracy.tasks"),
    (True, ["--until", "build"], "--until build stops before it"),
    (True, ["--from", "release"], "--from release starts after it"),
])
def test_cli_refuses_record_references_without_the_gate(tmp_path: Path, tasks: bool, extra: list[str],
                                                         says: str) -> None:
    recipe = write_recipe(tmp_path, tmp_path / "refs.yaml", tasks=tasks)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "run", str(recipe), "--record-references",
                        "--artifacts", str(tmp_path / "a"), *extra], capture_output=True, text=True, cwd=ROOT,
                       check=False, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--record-references" in r.stderr and says in r.stderr
    assert not (tmp_path / "refs.yaml").exists()
