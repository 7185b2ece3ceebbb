"""Run records: what a run resolved and produced, schema-versioned, under artifacts/runs/."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.util import atomic

RECORD_SCHEMA = 1


@dataclass
class StageRecord:
    name: str
    status: str = "not-run"  # done | skipped | failed | not-run
    fingerprint: str | None = None
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    passed: bool | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    log: str | None = None  # what libraries and child processes wrote while the stage ran


@dataclass
class RunRecord:
    recipe: str
    recipe_name: str
    recipe_digest: str
    stages: list[StageRecord]
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8])
    status: str = "running"  # running | succeeded | failed | gate-failed
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    pid: int = field(default_factory=os.getpid)
    env_vars: list[str] = field(default_factory=list)  # names only: values never recorded
    log_dir: str | None = None  # the stages' logs (<log_dir>/<stage>.log), when output was captured
    schema_version: int = RECORD_SCHEMA

    def stage(self, name: str) -> StageRecord:
        return next(s for s in self.stages if s.name == name)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """A record as save() wrote it; fields a newer trtbuild added are ignored, missing ones defaulted."""
        data = json.loads(path.read_text())
        known = {f.name for f in fields(StageRecord)}
        stages = [StageRecord(**{k: v for k, v in s.items() if k in known}) for s in data.get("stages", [])]
        top = {f.name for f in fields(cls)} - {"stages"}
        return cls(stages=stages, **{k: v for k, v in data.items() if k in top})

    def logs_path(self, artifacts: Path) -> Path:
        """Where this run's stage logs go: artifacts/runs/<run_id>/."""
        return artifacts / "runs" / self.run_id

    def save(self, artifacts: Path) -> Path:
        path = artifacts / "runs" / f"{self.run_id}.json"
        atomic.write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True))
        return path

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "recipe": self.recipe, "status": self.status,
            "seconds": round((self.finished or time.time()) - self.started, 3),
            "error": self.error, "log_dir": self.log_dir,
            "stages": [
                {"name": s.name, "status": s.status, "fingerprint": s.fingerprint,
                 "seconds": round(s.seconds, 3), "outputs": s.outputs, "reason": s.reason,
                 "passed": s.passed, "log": s.log, "summary": s.summary}
                for s in self.stages
            ],
        }
