"""Finished stage outputs, content-addressed by fingerprint under artifacts/cache/<stage>/.

A result exists only once its directory has been renamed into place with result.json inside;
a killed run leaves at most a `.tmp-*` directory, which the next run removes.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

from pipeline.runner.stage import StageResult
from pipeline.util import atomic

RESULT = "result.json"


class StageCache:
    def __init__(self, artifacts: Path) -> None:
        self.root = artifacts / "cache"

    def dir_for(self, stage: str, fp: str) -> Path:
        return self.root / stage / fp

    def get(self, stage: str, fp: str) -> StageResult | None:
        d = self.dir_for(stage, fp)
        try:
            data = json.loads((d / RESULT).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return StageResult.from_json(data, d)

    def new_workdir(self, stage: str, fp: str) -> Path:
        d = self.root / stage / f".tmp-{fp[:16]}.{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def commit(self, workdir: Path, result: StageResult, *, replace: bool = False) -> StageResult:
        """Write result.json last, then rename the work dir into place.

        `replace`: the run chose to redo a cached output (--force, --from, no longer valid), so
        the new output wins; a gate re-measured on purpose must not report its old verdict.
        """
        final = self.dir_for(result.stage, result.fingerprint)
        data = result.to_json()
        data["outputs"] = {k: _relative(v, workdir) for k, v in result.outputs.items()}
        atomic.write_text(workdir / RESULT, json.dumps(data, indent=2, sort_keys=True))
        if final.exists() and replace:
            old = final.with_name(f".tmp-old-{final.name[:16]}.{os.getpid()}")  # clean_stale removes leftovers
            final.rename(old)
            workdir.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        elif final.exists():  # a concurrent run of another recipe produced the same output
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            workdir.rename(final)
        cached = self.get(result.stage, result.fingerprint)
        assert cached is not None  # noqa: S101 - we just wrote it
        return cached

    def clean_stale(self, stage: str) -> None:
        """Remove work dirs of runs that died (their pid is gone)."""
        d = self.root / stage
        if not d.is_dir():
            return
        for p in d.glob(".tmp-*"):
            pid = p.name.rsplit(".", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)

    # the last fingerprint each recipe used for a stage, so `plan` can say what changed
    def remember(self, recipe: str, stage: str, comp: dict[str, Any], fp: str) -> None:
        path = self.root / "index" / recipe / f"{stage}.json"
        atomic.write_text(path, json.dumps({"fingerprint": fp, "components": comp}, sort_keys=True))

    def last(self, recipe: str, stage: str) -> dict[str, Any] | None:
        with suppress(FileNotFoundError, json.JSONDecodeError):
            return dict(json.loads((self.root / "index" / recipe / f"{stage}.json").read_text()))
        return None


def _relative(value: str, workdir: Path) -> str:
    if "://" in value:
        return value
    p = Path(value)
    if p.is_absolute():
        with suppress(ValueError):
            return p.relative_to(workdir).as_posix()
        return value
    return p.as_posix()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
