"""Small real stages for runner tests (test-only implementations of the Stage interface).

`python -m tests.unit.runner_stages RECIPE ARTIFACTS` runs them, so tests can kill a run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.recipe.load import LoadedRecipe, load_recipe
from pipeline.runner.runner import Runner
from pipeline.runner.stage import Stage, StageContext, StageOutput
from pipeline.util.hashing import sha256_file


def _log(event: str) -> None:
    log = os.environ.get("TEST_EVENT_LOG")
    if log:
        with Path(log).open("a") as f:
            f.write(f"{event} {os.getpid()} {time.monotonic():.4f}\n")


class ReadSource(Stage):
    """Reads the recipe's source.path/data.txt (a content input) and upper-cases it."""

    name = "fetch"

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {"path_given": True}

    def _file(self, loaded: LoadedRecipe) -> Path:
        return loaded.path.parent / str(loaded.recipe.source.path) / "data.txt"

    def external_digests(self, loaded: LoadedRecipe, artifacts: Path) -> dict[str, str]:
        return {"source": sha256_file(self._file(loaded))}

    def run(self, ctx: StageContext) -> StageOutput:
        _log("fetch-start")
        time.sleep(float(os.environ.get("TEST_FETCH_SLEEP", "0")))
        (ctx.workdir / "out.txt").write_text(self._file(ctx.loaded).read_text().upper())
        _log("fetch-end")
        return StageOutput(outputs={"text": "out.txt"})


class Repeat(Stage):
    """Repeats its input `calibration.samples` times; can be made slow to be killed mid-write."""

    name = "quantize"
    inputs = ("fetch",)

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {"samples": loaded.recipe.quantize.calibration.samples}

    def run(self, ctx: StageContext) -> StageOutput:
        _log("quantize-start")
        text = Path(ctx.inputs["fetch"].outputs["text"]).read_text()
        out = ctx.workdir / "big.txt"
        with out.open("w") as f:
            for _ in range(ctx.recipe.quantize.calibration.samples):
                f.write(text)
                f.flush()
                time.sleep(float(os.environ.get("TEST_QUANT_SLEEP", "0")))
        _log("quantize-end")
        return StageOutput(outputs={"big": "big.txt"}, summary={"bytes": out.stat().st_size})


class Gate(Stage):
    """Passes when the input is shorter than a limit read from gates.accuracy.text_samples."""

    name = "accuracy"
    inputs = ("quantize",)

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {"limit": loaded.recipe.gates.accuracy.text_samples}

    def run(self, ctx: StageContext) -> StageOutput:
        size = Path(ctx.inputs["quantize"].outputs["big"]).stat().st_size
        limit = ctx.recipe.gates.accuracy.text_samples
        # a measurement outside the recipe (as the throughput gate's is): same fingerprint, new verdict
        limit = int(os.environ.get("TEST_GATE_LIMIT", limit))
        ok = size < limit
        return StageOutput(summary={"size": size, "failed": [] if ok else [f"size {size} >= {limit}"]},
                           passed=ok)


class Unimplemented(Stage):
    name = "release"
    inputs = ("accuracy",)

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return {}


def stages() -> list[Stage]:
    return [ReadSource(), Repeat(), Gate()]


def main(argv: list[str]) -> int:
    loaded = load_recipe(argv[0], env={})
    Runner(loaded, artifacts=Path(argv[1]), stages=stages()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
