"""What a stage is: a function of its recipe section and the digests of its inputs."""

from __future__ import annotations

import importlib.metadata
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.errors import NotImplementedStageError

if TYPE_CHECKING:
    from pipeline.recipe.load import LoadedRecipe
    from pipeline.recipe.schema import Executor
    from pipeline.runner.events import Reporter
    from pipeline.runner.records import RunRecord

STAGE_ORDER = ("fetch", "quantize", "build", "tune", "accuracy", "throughput", "release", "publish")


@dataclass
class StageResult:
    """A finished stage, as stored in `<cache>/<stage>/<fingerprint>/result.json`."""

    stage: str
    fingerprint: str
    digest: str  # content digest of the output; what downstream fingerprints use
    dir: Path  # the output directory (immutable once renamed into place)
    outputs: dict[str, str]  # output name -> absolute path or URI
    summary: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None  # gates only
    seconds: float = 0.0
    components: dict[str, Any] = field(default_factory=dict)  # what the fingerprint was made of

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1, "stage": self.stage, "fingerprint": self.fingerprint,
            "digest": self.digest, "outputs": self.outputs, "summary": self.summary,
            "passed": self.passed, "seconds": self.seconds, "components": self.components,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], dir: Path) -> StageResult:
        outputs = {k: (v if "://" in v else str(dir / v)) for k, v in data["outputs"].items()}
        return cls(stage=data["stage"], fingerprint=data["fingerprint"], digest=data["digest"],
                   dir=dir, outputs=outputs, summary=data.get("summary", {}),
                   passed=data.get("passed"), seconds=data.get("seconds", 0.0),
                   components=data.get("components", {}))


@dataclass
class StageOutput:
    """What `Stage.run` returns. Paths in `outputs` are relative to the work dir, or URIs."""

    outputs: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None
    digest: str | None = None  # default: the content digest of the work dir


@dataclass
class StageContext:
    loaded: LoadedRecipe
    workdir: Path  # write outputs here; renamed into the cache when run() returns
    inputs: dict[str, StageResult]  # finished upstream stages by name
    artifacts: Path
    reporter: Reporter
    # run-time options of this invocation (e.g. record_references); never part of a fingerprint:
    # they ask for side effects, not for different outputs
    options: dict[str, Any] = field(default_factory=dict)
    # every earlier stage of this run with its result (cached ones too), in run order, and the
    # run's record: what a stage reporting on the whole run (release, to MLflow) reads
    earlier: dict[str, StageResult] = field(default_factory=dict)
    run: RunRecord | None = None

    @property
    def recipe(self) -> Any:
        return self.loaded.recipe

    def progress(self, description: str, total: float | None = None) -> Any:
        return self.reporter.task(description, total)

    def transfer_progress(self) -> _TransferTask:
        """Byte progress for a store put/get (bars with MB/s, or a line every 10 s in logs)."""
        return _TransferTask(self.reporter)


class _TransferTask:
    """A store's TransferProgress on a reporter task; close() when the transfer is over."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self._task: Any = None
        self._lock = threading.Lock()

    def start(self, total_bytes: int, description: str) -> None:
        self._task = self._reporter.task(description, total_bytes, bytes_=True)
        self._task.__enter__()

    def advance(self, nbytes: int) -> None:
        with self._lock:  # store workers call this from several threads
            if self._task is not None:
                self._task.advance(nbytes)

    def close(self) -> None:
        if self._task is not None:
            self._task.__exit__(None, None, None)
            self._task = None


class Stage:
    """Base class. Subclasses set `name`, `inputs`, and implement `section` and `run`."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ()
    # bump when the stage's code changes what it produces, so old outputs are not reused
    code_version: ClassVar[int] = 1
    tools: ClassVar[tuple[str, ...]] = ()  # distributions whose versions enter the fingerprint

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        """The recipe fields that matter to this stage (anything else never changes its output)."""
        raise NotImplementedError

    def external_digests(self, loaded: LoadedRecipe, artifacts: Path) -> dict[str, str]:
        """Digests of inputs that do not come from another stage (e.g. local source files)."""
        return {}

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return True

    def executor(self, loaded: LoadedRecipe) -> Executor | None:
        """Non-None: run this stage through the stage executor (another interpreter/container)."""
        return None

    def tool_versions(self) -> dict[str, str]:
        out = {}
        for dist in self.tools:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[dist] = "absent"
        return out

    def still_valid(self, ctx: StageContext, result: StageResult) -> str | None:
        """For stages with effects outside the cache: why a cached result no longer holds."""
        return None

    def gates_failed(self, ctx: StageContext) -> tuple[str, dict[str, Any]] | None:
        """Runs instead of `run` when a gate failed and this stage is held back: what it records of
        the refusal elsewhere (a line for the operator, a summary), if anything. Never cached."""
        return None

    def run(self, ctx: StageContext) -> StageOutput:
        raise NotImplementedStageError(self.name, "not implemented yet", hint="see the open issues")
