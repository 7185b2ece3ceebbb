"""tune: search the runtime settings of the built bundle for goodput, and write serving profiles.

Between build and the gates. Every trial serves the build's bundle with one point's settings
through the launch code of the throughput gate (pipeline/stages/candidate.py: a model on a
private tritonserver for a reference bundle, trtllm-serve otherwise) and measures it with the
gate's client on the recipe's workloads (pipeline/tune/objective.py). The search is budgeted
successive halving (pipeline/tune/search.py); the wall-clock budget covers server starts too.

Output: a bundle = the build's files (hard-linked) + profiles.json, manifest last
(pipeline/tune/profiles.py says why the profiles are in the bundle id), and the report (tune.json,
tune.md, tune.png). The throughput gate, release and publish take this bundle.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import StageError
from pipeline.recipe.load import LoadedRecipe
from pipeline.runner.stage import Stage, StageContext, StageOutput
from pipeline.stages.common import fields


class TuneStage(Stage):
    name = "tune"
    inputs = ("fetch", "quantize", "build")
    code_version = 1

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        r = loaded.recipe
        g = r.gates.throughput
        # what the points are measured on and against: the gate's workloads, SLOs and server
        return {"tune": fields(r.tune, exclude={"enabled"}),
                "workloads": [w.model_dump(mode="json") for w in g.workloads],
                "slo": {"ttft_s": g.slo_ttft_s, "tpot_s": g.slo_tpot_s}, "warmup": g.warmup_requests,
                "candidate": fields(g.candidate, exclude={"start_timeout_s"}), "instances": r.publish.instances}

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return bool(loaded.recipe.tune.enabled)

    def run(self, ctx: StageContext) -> StageOutput:
        from transformers import AutoTokenizer

        from pipeline.bench.workload import make_prompts
        from pipeline.stages.throughput import candidate_kind
        from pipeline.tune.objective import measure, objective_of
        from pipeline.tune.profiles import choose, write_tuned_bundle
        from pipeline.tune.report import write_report
        from pipeline.tune.search import NoiseRule, SearchConfig, grid, successive_halving
        from pipeline.tune.settings import defaults, space_of

        started = time.monotonic()
        r = ctx.recipe
        t = r.tune
        kind = candidate_kind(r)
        if kind == "endpoint":  # also a recipe rule
            raise StageError("tune", "the candidate is an endpoint trtbuild does not start; tune needs to start it")
        source = Path(ctx.inputs["fetch"].outputs["checkpoint"])
        build_bundle = Path(ctx.inputs["build"].outputs["bundle"])
        wanted = set(t.objective.workloads or [w.name for w in r.gates.throughput.workloads])
        with ctx.progress("loading the tokenizer and making prompts"):
            tok = AutoTokenizer.from_pretrained(source)
            prompts = {w.name: make_prompts(tok, kind=w.kind, num_prompts=w.num_prompts, input_len=w.input_len,
                                            prefixes=w.prefixes, prefix_len=w.prefix_len)
                       for w in r.gates.throughput.workloads if w.name in wanted}
        objective = objective_of(r, prompts)
        space = space_of(r)
        base = defaults(r)
        points = grid(space)
        default_point = {k: base[k] for k in space}
        # the defaults first: by the noise rule's tie-break they stay unless a point beats them beyond noise
        if default_point in points:
            points.remove(default_point)
        points.insert(0, default_point)
        ctx.reporter.info(f"tune: {len(points)} points, budget {t.budget_s} s; objective: {objective.describe()}")
        s = t.search
        config_for: Callable[[float], SearchConfig] = lambda left: SearchConfig(  # noqa: E731
            budget_s=left, eta=s.eta, first_trials=s.first_trials, max_trials=s.max_trials,
            rule=NoiseRule(alpha=s.alpha, min_effect=s.min_effect))

        with self._serve(ctx, kind, build_bundle, source) as serve, \
                ctx.progress(f"tuning {len(points)} points", total=None) as bar:
            index = {tuple(sorted(p.items())): i for i, p in enumerate(points)}
            best: list[float] = [0.0]

            def one_trial(settings: dict[str, Any], n: int) -> Any:
                i = index[tuple(sorted(settings.items()))]
                what = ", ".join(f"{k}={v}" for k, v in settings.items())
                bar.update(description=f"tune point {i} ({what}) trial {n + 1}; best so far {best[0]:.3f} req/s")
                with serve(settings, f"tune_p{i}") as endpoint:
                    trial, _ = measure(endpoint, objective)
                best[0] = max(best[0], trial.goodput)
                ctx.reporter.info(f"tune point {i} ({what}) trial {n + 1}: goodput {trial.goodput:.3f} req/s, "
                                  f"TTFT p99 {trial.metrics['ttft_p99']:.3f} s, "
                                  f"{trial.metrics['output_tok_s']:.1f} tok/s; {time.monotonic() - started:.0f} s "
                                  f"of {t.budget_s} s")
                return trial

            # the budget counts from the stage's start: prompts and the server start are spent already
            result = successive_halving(points, one_trial, config_for(t.budget_s - (time.monotonic() - started)))
            confirmed = self._confirm(result, one_trial, s.confirm_trials, started, t.budget_s)
            if confirmed is not None:
                confirmed["kept_default"] = self._keep_default(result, NoiseRule(alpha=s.alpha,
                                                                                 min_effect=s.min_effect))
        if result.best is None:
            errors = sorted({p.error for p in result.points if p.error})
            raise StageError("tune", "no point was measured within the budget"
                             + (f": {'; '.join(errors[:3])}" if errors else ""),
                             hint="raise tune.budget_s, or check the candidate server's log in the stage's dir")
        profiles = choose(result, t.profiles)
        default_name = t.default_profile or t.profiles[0].name
        seconds = time.monotonic() - started
        summary = {"objective": objective.describe(), "budget_s": t.budget_s, "seconds": round(seconds, 1),
                   "trials": result.trials, "tie": result.tie, "noise_rule": result.rule}
        bundle_id = write_tuned_bundle(build_bundle, ctx.workdir / "bundle", profiles=profiles, default=default_name,
                                       tune=summary)
        outputs = write_report(ctx.workdir, result=result, profiles=profiles, default_point=0,
                               objective=objective.describe(), space=space, budget_s=t.budget_s, seconds=seconds,
                               confirmed=confirmed)
        d = result.points[0]
        search_ratio = result.best.mean / d.mean if d.trials and d.mean > 0 else None
        ratio = confirmed["ratio"] if confirmed else search_ratio
        ctx.reporter.info(f"tune: {result.trials} trials in {seconds:.0f} s; profiles "
                          + "; ".join(f"{n}: {p['settings']}" for n, p in profiles.items())
                          + (f"; tuned/default goodput {ratio:.3f}" if ratio else "")
                          + ("; best and runner-up tie within noise" if result.tie else ""))
        return StageOutput(
            outputs={"bundle": "bundle", **outputs},
            summary={"bundle_id": bundle_id, "build_bundle_id": ctx.inputs["build"].summary.get("bundle_id"),
                     "default_profile": default_name,
                     "profiles": {n: p["settings"] for n, p in profiles.items()},
                     "tuned_vs_default_goodput": ratio, "tuned_vs_default_in_search": search_ratio,
                     "confirmed": confirmed, "tie": result.tie, "trials": result.trials,
                     "seconds": round(seconds, 1), "budget_s": t.budget_s,
                     "stopped_by_budget": result.stopped_by_budget,
                     "metrics": {"tune.goodput.best": result.best.mean, "tune.goodput.default": d.mean if d.trials
                                 else None, "tune.seconds": seconds}},
            digest=bundle_id)

    @staticmethod
    def _confirm(result: Any, one_trial: Callable[[dict[str, Any], int], Any], n: int, started: float,
                 budget_s: float) -> dict[str, Any] | None:
        """Default and chosen settings re-measured `n` times each, alternating (default first in even
        rounds), while the budget allows: the tuned/default ratio without the search's selection bias
        (the best of many noisy points is biased upward). None when the default was chosen."""
        best = result.best
        if best is None or best.index == 0 or n == 0:
            return None
        default = result.points[0]
        got: dict[str, list[float]] = {"default": [], "tuned": []}
        # what a trial costs: the search's trials so far (a confirmation trial is one more of them)
        costs: list[float] = [t.seconds for p in result.points for t in p.trials]
        for k in range(n):
            for name, p in ([("default", default), ("tuned", best)] if k % 2 == 0
                            else [("tuned", best), ("default", default)]):
                guess = statistics.median(costs) if costs else 0.0
                if time.monotonic() - started + guess > budget_s:
                    break
                t0 = time.monotonic()
                trial = one_trial(p.settings, len(p.trials))
                p.trials.append(trial)  # a measurement of the point like any other: the final rule sees it
                got[name].append(trial.goodput)
                costs.append(time.monotonic() - t0)
        if not got["default"] or not got["tuned"]:
            return None
        d, t = sum(got["default"]) / len(got["default"]), sum(got["tuned"]) / len(got["tuned"])
        return {"default_goodput": got["default"], "tuned_goodput": got["tuned"],
                "ratio": t / d if d > 0 else None}

    @staticmethod
    def _keep_default(result: Any, rule: Any) -> bool:
        """With the confirmation trials added, the chosen point must still beat the default beyond
        noise (the stated rule); otherwise the default settings are chosen (a tie goes to point 0)."""
        best, default = result.best, result.points[0]
        if best is None or best is default or not default.trials:
            return False
        differ, p = rule.differ(best.goodputs, default.goodputs)
        if differ and best.mean > default.mean:
            return False
        result.runner_up, result.best, result.tie, result.p_value = best, default, True, p
        return True

    @contextlib.contextmanager
    def _serve(self, ctx: StageContext, kind: str, bundle: Path, source: Path) -> Iterator[Any]:
        """A function (settings, name) -> context manager yielding an endpoint for one trial."""
        if kind == "trtllm-serve":
            from pipeline.stages.candidate import trtllm_candidate

            def serve_trtllm(settings: dict[str, Any], name: str) -> Any:
                return trtllm_candidate(ctx, bundle, source, settings=settings, log_name=f"{name}-trtllm-serve.log")

            yield serve_trtllm
            return
        from pipeline.stages.candidate import triton_candidates

        # one tritonserver for the search; each trial loads the point as its own model and unloads it
        with triton_candidates(ctx, log_name="tune-triton.log") as triton:
            def serve_triton(settings: dict[str, Any], name: str) -> Any:
                return triton.model(bundle, name, settings=settings)

            yield serve_triton
