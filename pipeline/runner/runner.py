"""The stage graph: fingerprint, skip, run, record, resume.

fetch -> quantize -> build -> accuracy -> throughput -> release -> publish. A stage whose
fingerprint matches a finished output is skipped; a failed or killed run resumes from the first
unfinished stage; every run leaves a record under artifacts/runs/.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import GateFailed, TrtbuildError, UsageError
from pipeline.recipe.load import LoadedRecipe
from pipeline.runner import fingerprint as fpmod
from pipeline.runner.cache import StageCache
from pipeline.runner.capture import OutputCapture, tail
from pipeline.runner.events import NullReporter, Reporter
from pipeline.runner.lock import recipe_lock
from pipeline.runner.records import RunRecord, StageRecord
from pipeline.runner.stage import Stage, StageContext, StageResult
from pipeline.util.hashing import digest_dir


@dataclass
class PlannedStage:
    name: str
    enabled: bool
    fingerprint: str | None
    status: str  # cached | stale | disabled | blocked
    reason: str
    components: dict[str, Any] | None = None
    result: StageResult | None = None


def default_stages() -> list[Stage]:
    from pipeline.stages import all_stages

    return all_stages()


class Runner:
    def __init__(self, loaded: LoadedRecipe, *, artifacts: Path = Path("artifacts"),
                 stages: Sequence[Stage] | None = None, reporter: Reporter | None = None,
                 options: dict[str, Any] | None = None, capture: OutputCapture | None = None) -> None:
        self.loaded = loaded
        # None: stages' output streams as it comes (stdout kept for --json); else a log per stage
        self.capture = capture
        self.options = dict(options or {})  # handed to every stage in its StageContext
        self.artifacts = artifacts.resolve()  # outputs are recorded as absolute paths
        self.stages = list(stages) if stages is not None else default_stages()
        self.reporter: Reporter = reporter or NullReporter()
        self.cache = StageCache(self.artifacts)
        self.names = [s.name for s in self.stages]
        self.last_record: RunRecord | None = None

    # ------------------------------------------------------------------ fingerprints
    def _components(self, stage: Stage, results: dict[str, StageResult | None]) -> dict[str, Any] | None:
        inputs: dict[str, str] = {}
        for dep in stage.inputs:
            if dep not in results:
                continue  # not part of this pipeline (tests with fewer stages)
            r = results[dep]
            if r is None:
                return None  # upstream has no output yet: fingerprint unknown until it runs
            inputs[dep] = r.digest
        return fpmod.components(
            stage=stage.name, code_version=stage.code_version,
            section=stage.section(self.loaded), inputs=inputs,
            external=stage.external_digests(self.loaded, self.artifacts),
            tools=stage.tool_versions(),
        )

    def plan(self) -> list[PlannedStage]:
        out: list[PlannedStage] = []
        results: dict[str, StageResult | None] = {}
        for stage in self.stages:
            if not stage.enabled(self.loaded):
                out.append(PlannedStage(stage.name, False, None, "disabled", "disabled in the recipe"))
                results[stage.name] = _disabled(stage.name)
                continue
            comp = self._components(stage, results)
            if comp is None:
                blocked = next(d for d in stage.inputs if results.get(d, True) is None)
                out.append(PlannedStage(stage.name, True, None, "stale", f"will run after '{blocked}'"))
                results[stage.name] = None
                continue
            fp = fpmod.fingerprint(comp)
            cached = self.cache.get(stage.name, fp)
            if cached is not None:
                out.append(PlannedStage(stage.name, True, fp, "cached", "unchanged", comp, cached))
            else:
                last = self.cache.last(self.loaded.recipe.name, stage.name)
                why = ("never run" if last is None
                       else fpmod.explain(last["components"], comp))
                out.append(PlannedStage(stage.name, True, fp, "stale", why, comp))
            results[stage.name] = cached
        return out

    # ------------------------------------------------------------------ run
    def run(self, *, from_stage: str | None = None, until: str | None = None, force: bool = False,
            lock_timeout: float | None = None) -> RunRecord:
        for opt, value in (("--from", from_stage), ("--until", until)):
            if value is not None and value not in self.names:
                raise UsageError(f"{opt} {value}: unknown stage; stages are {', '.join(self.names)}")
        first = self.names.index(from_stage) if from_stage else 0
        last = self.names.index(until) if until else len(self.names) - 1
        if first > last:
            raise UsageError(f"--from {from_stage} comes after --until {until}")

        recipe = self.loaded.recipe
        with recipe_lock(self.artifacts, recipe.name, timeout=lock_timeout, on_wait=self.reporter.info):
            record = RunRecord(recipe=str(self.loaded.path), recipe_name=recipe.name,
                               recipe_digest=self.loaded.digest,
                               stages=[StageRecord(n) for n in self.names],
                               env_vars=self.loaded.env_vars)
            if self.capture is not None and not self.capture.verbose:
                record.log_dir = str(record.logs_path(self.artifacts))
            record.save(self.artifacts)
            self.last_record = record  # what a caller shows when run() raises (a failed gate)
            try:
                self._run_stages(record, first, last, force or from_stage is not None)
                record.status = "succeeded"
            except GateFailed as e:
                record.status, record.error = "gate-failed", e.one_line()
                raise
            except BaseException as e:
                self._point_at_recipe(e)
                record.status = "failed"
                record.error = e.one_line() if isinstance(e, TrtbuildError) else f"{type(e).__name__}: {e}"
                raise
            finally:
                record.finished = time.time()
                record.save(self.artifacts)
        return record

    def _run_stages(self, record: RunRecord, first: int, last: int, force: bool) -> None:
        results: dict[str, StageResult | None] = {}
        gate_failures: list[str] = []
        for i, stage in enumerate(self.stages):
            rec = record.stage(stage.name)
            if i > last:
                rec.reason = "after --until"
                continue
            if not stage.enabled(self.loaded):
                rec.status, rec.reason = "skipped", "disabled in the recipe"
                self.reporter.stage_skipped(stage.name, rec.reason)
                results[stage.name] = _disabled(stage.name)
                continue
            comp = self._components(stage, results)
            assert comp is not None  # noqa: S101 - every upstream stage ran or was cached
            fp = fpmod.fingerprint(comp)
            rec.fingerprint = fp
            cached = self.cache.get(stage.name, fp)
            rerun = force and i >= first
            if cached is not None and not rerun:
                ctx = self._context(stage, results, cached.dir)
                invalid = stage.still_valid(ctx, cached)
                if invalid is None:
                    self._accept(rec, cached, "skipped", f"unchanged (fingerprint {fp[:12]})")
                    self.reporter.stage_skipped(stage.name, rec.reason)
                    results[stage.name] = cached
                    self.cache.remember(self.loaded.recipe.name, stage.name, comp, fp)
                    if cached.passed is False:
                        gate_failures.append(_gate_message(cached))
                    continue
                why = invalid
            elif cached is not None:
                why = "forced"
            else:
                prev = self.cache.last(self.loaded.recipe.name, stage.name)
                why = "never run" if prev is None else fpmod.explain(prev["components"], comp)
            if i < first:
                raise UsageError(f"--from {self.names[first]}: stage '{stage.name}' has no finished "
                                 f"output for this recipe ({why}); run without --from first")
            if gate_failures and stage.name in ("release", "publish"):
                rec.reason = "a gate failed"
                self._gates_failed(stage, rec, results)
                continue
            result = self._execute(stage, rec, comp, fp, results, why, replace=cached is not None)
            results[stage.name] = result
            if result.passed is False:
                gate_failures.append(_gate_message(result))
        if gate_failures:
            raise GateFailed("; ".join(gate_failures),
                             hint="see the gate report; release and publish were not run")

    def _gates_failed(self, stage: Stage, rec: StageRecord, results: dict[str, StageResult | None]) -> None:
        """Let a held-back stage record the refusal (the release: an MLflow run with the FAIL verdicts).

        Its own failure (registry down) is reported, never raised: the gate failure is the run's error."""
        try:
            with self._output(stage.name) as log:
                done = stage.gates_failed(self._context(stage, results, self.artifacts))
        except TrtbuildError as e:
            self.reporter.info(f"{stage.name}: the failed gates were not recorded: {e.one_line()}")
            return
        if log is not None and log.is_file() and log.stat().st_size == 0:
            log.unlink()
        if done is not None:
            line, rec.summary = done
            self.reporter.info(f"{stage.name}: {line}")

    def _context(self, stage: Stage, results: dict[str, StageResult | None], workdir: Path) -> StageContext:
        inputs = {d: r for d in stage.inputs if (r := results.get(d)) is not None}
        earlier = {n: r for n, r in results.items() if r is not None}
        return StageContext(loaded=self.loaded, workdir=workdir, inputs=inputs,
                            artifacts=self.artifacts, reporter=self.reporter, options=dict(self.options),
                            earlier=earlier, run=self.last_record)

    def _execute(self, stage: Stage, rec: StageRecord, comp: dict[str, Any], fp: str,
                 results: dict[str, StageResult | None], why: str, *, replace: bool = False) -> StageResult:
        self.cache.clean_stale(stage.name)
        workdir = self.cache.new_workdir(stage.name, fp)
        ctx = self._context(stage, results, workdir)
        self.reporter.stage_started(stage.name, fp, why)
        start = time.monotonic()
        log: Path | None = None
        try:
            with self._output(stage.name) as log:
                rec.log = str(log) if log is not None else None
                out = stage.run(ctx)
        except BaseException as e:
            rec.status, rec.seconds = "failed", time.monotonic() - start
            self._point_at_recipe(e)
            rec.reason = e.one_line() if isinstance(e, TrtbuildError) else f"{type(e).__name__}: {e}"
            self.reporter.stage_failed(stage.name, rec.reason)
            if log is not None and not isinstance(e, KeyboardInterrupt):
                self.reporter.log_excerpt(log, tail(log))
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
            if not isinstance(e, TrtbuildError | KeyboardInterrupt):
                rec.summary["traceback"] = traceback.format_exc()
            raise
        seconds = time.monotonic() - start
        if log is not None and log.is_file() and log.stat().st_size == 0:
            log.unlink()  # the stage said nothing beyond its own lines: no log to point at
            rec.log = None
        outputs = {k: (v if "://" in v else str(workdir / v)) for k, v in out.outputs.items()}
        result = StageResult(stage=stage.name, fingerprint=fp, digest=out.digest or digest_dir(workdir),
                             dir=workdir, outputs=outputs, summary=out.summary, passed=out.passed,
                             seconds=seconds, components=comp)
        result = self.cache.commit(workdir, result, replace=replace)
        self.cache.remember(self.loaded.recipe.name, stage.name, comp, fp)
        self._accept(rec, result, "done", why)
        rec.seconds = seconds
        verdict = "" if result.passed is None else ("PASS" if result.passed else "FAIL")
        self.reporter.stage_done(stage.name, seconds, verdict)
        return result

    @contextlib.contextmanager
    def _output(self, stage: str) -> Iterator[Path | None]:
        """Where a stage's library and child-process output goes: its log, or the stream (stderr)."""
        record = self.last_record
        if self.capture is not None and record is not None:
            log_dir = Path(record.log_dir) if record.log_dir is not None else Path()
            with self.capture.into(log_dir / f"{stage}.log") as log:
                yield log
            return
        # libraries print (ModelOpt does): keep stdout for --json output only
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield None

    def _point_at_recipe(self, e: BaseException) -> None:
        """An error about a recipe field (a GGUF file that is not there) names FILE:LINE."""
        if isinstance(e, TrtbuildError) and len(e.args) == 1 and isinstance(e.args[0], str):
            e.args = (self.loaded.with_origin(e.args[0]),)

    @staticmethod
    def _accept(rec: StageRecord, result: StageResult, status: str, reason: str) -> None:
        rec.status, rec.reason = status, reason
        rec.outputs = dict(result.outputs)
        rec.passed = result.passed
        rec.summary = result.summary


def _disabled(name: str) -> StageResult:
    return StageResult(stage=name, fingerprint="disabled", digest="disabled", dir=Path(),
                       outputs={}, passed=None)


def _gate_message(result: StageResult) -> str:
    failed = result.summary.get("failed") or []
    detail = ", ".join(str(f) for f in failed) if failed else "criteria not met"
    return f"gate '{result.stage}' failed: {detail}"
