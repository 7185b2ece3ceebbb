"""throughput: the served candidate against a vLLM baseline on the same workload and client.

The candidate is served by a private tritonserver (the bundle published into a temporary
repository) or trtllm-serve; the baseline is vLLM started on loopback from its own interpreter,
or an existing endpoint (OpenAI or Triton protocol). Each point is measured on one side at a
time, with the same prompts, and each side's median trial is compared.

When the servers run is the schedule (pipeline/gpu/schedule.py): `together` (the CPU) keeps both
up and alternates trials (candidate first in even trials, baseline first in odd ones), so a
change in the machine's load lands on both sides; `sequential` (GPUs, where vLLM and TensorRT-LLM
each take most of a GPU's memory) runs the baseline's whole sweep, stops it, then the candidate's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import NotImplementedStageError, ServiceError, StageError
from pipeline.recipe.load import LoadedRecipe, interpolate_string
from pipeline.runner.stage import Stage, StageContext, StageOutput
from pipeline.stages.common import fields, served_bundle
from pipeline.util import atomic


class ThroughputStage(Stage):
    name = "throughput"
    inputs = ("fetch", "quantize", "build", "tune")
    # 2: trials interleaved between candidate and baseline; 3: GPU schedule, explicit fractions;
    # 4: the candidate is the tuned bundle served with its default profile
    code_version = 4

    def section(self, loaded: LoadedRecipe) -> dict[str, Any]:
        return fields(loaded.recipe.gates.throughput,
                      exclude={"enabled", "baseline.start_timeout_s", "candidate.start_timeout_s"})

    def enabled(self, loaded: LoadedRecipe) -> bool:
        return loaded.recipe.gates.throughput.enabled

    def run(self, ctx: StageContext) -> StageOutput:
        from transformers import AutoTokenizer

        from pipeline.backends.reference.pacing import pacing_from_env
        from pipeline.bench import criteria as crit
        from pipeline.bench.plots import plot
        from pipeline.bench.workload import make_prompts

        r = ctx.recipe
        cfg = r.gates.throughput
        kind = candidate_kind(r)
        if kind == "triton" and r.build.backend != "reference":  # also a recipe rule; kept for code-built recipes
            raise NotImplementedStageError("throughput", f"serving a '{r.build.backend}' candidate through Triton "
                                           "needs its TensorRT-LLM backend on a GPU host; not wired yet (use "
                                           "trtllm-serve)")
        try:  # read before any server starts: a bad value fails here, not inside the candidate's model
            hooks = pacing_from_env()
        except ValueError as e:
            raise StageError("throughput", str(e)) from None
        source = Path(ctx.inputs["fetch"].outputs["checkpoint"])
        with ctx.progress("loading the tokenizer and making prompts"):
            tok = AutoTokenizer.from_pretrained(source)
            prompts = {w.name: make_prompts(tok, kind=w.kind, num_prompts=w.num_prompts, input_len=w.input_len,
                                            prefixes=w.prefixes, prefix_len=w.prefix_len) for w in cfg.workloads}
        from pipeline.gpu.schedule import throughput_servers

        servers = throughput_servers(r, ctx.loaded.path.parent, checkpoint=source)
        if servers.problems:
            raise StageError("throughput", "; ".join(servers.problems),
                             hint="see `trtbuild plan RECIPE --explain DIR`")
        ctx.reporter.info(f"throughput schedule: {servers.schedule} ({servers.reason})")
        medians, trials = self._measure(ctx, kind, source, servers.schedule, servers.vllm.args(), prompts)
        candidate, baseline = medians["candidate"], medians["baseline"]
        results = crit.evaluate(cfg.criteria, candidate, baseline)
        points = [*candidate.values(), *baseline.values()]
        passed = all(x.passed for x in results)
        report = {"passed": passed, "criteria": crit.to_json(results),
                  "points": [p.to_json() for p in points], "trials_output_tok_s": trials,
                  "input_tokens": {k: v.input_tokens for k, v in prompts.items()},
                  "workloads": [w.model_dump() for w in cfg.workloads], "candidate_server": kind,
                  "schedule": {"mode": servers.schedule, "reason": servers.reason},
                  "candidate_profile": self._profile(ctx, kind),
                  # a planted fault or pacing in this process's environment reaches the candidate
                  "candidate_test_hooks": hooks.describe() if hooks.active else None}
        atomic.write_text(ctx.workdir / "throughput.json", json.dumps(report, indent=2, sort_keys=True))
        md = crit.markdown(results, points)
        if hooks.active:
            md += f"\nWARNING: the candidate ran with test hooks: {hooks.describe()}\n"
        atomic.write_text(ctx.workdir / "throughput.md", md)
        ttfts = {f"{p.endpoint} {p.workload}@{p.concurrency}": p.ttft_samples for p in points
                 if p.concurrency == max(w.concurrency[-1] for w in cfg.workloads)}
        plot(points, ttfts, ctx.workdir)
        ctx.reporter.info(md)
        metrics = {f"{p.endpoint}.{p.workload}.c{p.concurrency}.output_tok_s": p.output_tok_s for p in points}
        return StageOutput(outputs={"report": "throughput.json", "markdown": "throughput.md"},
                           summary={"failed": [x.line() for x in results if not x.passed], "metrics": metrics},
                           passed=passed)

    @staticmethod
    def _profile(ctx: StageContext, kind: str) -> dict[str, Any] | None:
        """The serving profile the candidate ran with (the tuned bundle's default), for the report."""
        if kind == "endpoint":
            return None
        from pipeline.bundle import load_bundle
        from pipeline.tune.profiles import resolve

        name, settings = resolve(load_bundle(served_bundle(ctx)[0], verify=False), None)
        return {"name": name, "settings": settings}

    def _measure(self, ctx: StageContext, kind: str, source: Path, schedule: str, vllm_args: list[str],
                 prompts: dict[str, Any]) -> tuple[dict[str, dict[tuple[str, int], Any]],
                                                   dict[str, dict[str, list[float]]]]:
        """Start the servers as the schedule says and sweep them."""
        if schedule == "together":
            with contextlib.ExitStack() as stack:
                # the baseline first: vLLM takes a minute to start, and a failure there wastes nothing
                base_ep = stack.enter_context(self._baseline(ctx, source, vllm_args))
                cand_ep = stack.enter_context(self._candidate(ctx, kind, source))
                return self._sweep(ctx, [("candidate", cand_ep), ("baseline", base_ep)], prompts)
        # one server at a time on the GPUs: the baseline's sweep, stopped, then the candidate's
        with self._baseline(ctx, source, vllm_args) as base_ep:
            medians, trials = self._sweep(ctx, [("baseline", base_ep)], prompts)
        with self._candidate(ctx, kind, source) as cand_ep:
            more, more_trials = self._sweep(ctx, [("candidate", cand_ep)], prompts)
        return {**medians, **more}, {**trials, **more_trials}

    def _sweep(self, ctx: StageContext, sides: list[tuple[str, Any]], prompts: dict[str, Any]
               ) -> tuple[dict[str, dict[tuple[str, int], Any]], dict[str, dict[str, list[float]]]]:
        """Every (workload, concurrency) point on each side's endpoint, trials alternating between the
        sides when there are two; the median trial per side and point, and every trial's tok/s."""
        from pipeline.bench.harness import median_point
        from pipeline.bench.isolated import measure_in_child

        cfg = ctx.recipe.gates.throughput
        names = [side for side, _ in sides]
        medians: dict[str, dict[tuple[str, int], Any]] = {side: {} for side in names}
        per_trial: dict[str, dict[str, list[float]]] = {side: {} for side in names}
        total = len(sides) * sum(len(w.concurrency) * cfg.trials for w in cfg.workloads)
        what = "load on candidate and baseline, alternating" if len(sides) > 1 else f"load on the {names[0]}"
        with ctx.progress(what, total=total) as bar:
            for w in cfg.workloads:
                for c in w.concurrency:
                    trials: dict[str, list[Any]] = {side: [] for side in names}
                    for t in range(cfg.trials):
                        for side, endpoint in sides if t % 2 == 0 else sides[::-1]:
                            # the client in a process of its own: this one has progress threads
                            trials[side].append(measure_in_child(
                                endpoint, prompts[w.name].texts, output_len=w.output_len, concurrency=c,
                                workload=w.name, warmup=cfg.warmup_requests, slo_ttft=cfg.slo_ttft_s,
                                slo_tpot=cfg.slo_tpot_s))
                            bar.advance()
                    for side, points in trials.items():
                        medians[side][(w.name, c)] = median_point(points)
                        per_trial[side][f"{w.name}@{c}"] = [p.output_tok_s for p in points]
        return medians, per_trial

    @contextlib.contextmanager
    def _candidate(self, ctx: StageContext, kind: str, source: Path) -> Iterator[Any]:
        from pipeline.bench.client import OpenAIEndpoint, TritonEndpoint

        c = ctx.recipe.gates.throughput.candidate
        bundle, _ = served_bundle(ctx)
        if kind == "endpoint":
            assert c.url and c.model  # noqa: S101 - a recipe rule guarantees both
            endpoint = TritonEndpoint if c.protocol == "triton" else OpenAIEndpoint
            yield endpoint(interpolate_string(c.url), c.model, name="candidate")
            return
        if kind == "trtllm-serve":
            from pipeline.stages.candidate import trtllm_candidate

            with trtllm_candidate(ctx, bundle, source) as endpoint:  # the bundle's default profile
                yield endpoint
            return
        from pipeline.stages.candidate import triton_candidates

        with triton_candidates(ctx) as triton, triton.model(bundle, "candidate") as endpoint:
            yield endpoint

    @contextlib.contextmanager
    def _baseline(self, ctx: StageContext, source: Path, gpu_args: list[str]) -> Iterator[Any]:
        from pipeline.bench.client import OpenAIEndpoint, TritonEndpoint
        from pipeline.bench.vllm_server import VllmServer

        b = ctx.recipe.gates.throughput.baseline
        if b.kind == "endpoint":
            if not b.url:  # also a recipe rule; kept for recipes built in code
                raise NotImplementedStageError("throughput", "baseline kind 'endpoint' needs baseline.url")
            from pipeline.util.net import reachable

            # an endpoint that is not there fails here, in one line, not as errors in every trial
            why = reachable(b.url)
            if why is not None:
                raise ServiceError(f"throughput baseline {b.url}: {why}; start it, or fix "
                                   "gates.throughput.baseline.url")
            kind = TritonEndpoint if b.protocol == "triton" else OpenAIEndpoint
            yield kind(b.url, b.model, name="baseline")
            return
        model_dir = source if b.checkpoint == "source" else Path(ctx.inputs["quantize"].outputs["unified"])
        python = interpolate_string(b.python)
        with ctx.progress("starting vLLM baseline (about a minute on CPU)"):
            server = VllmServer(python=python, model_dir=model_dir, max_model_len=ctx.recipe.build.max_seq_len,
                                extra_args=list(b.extra_args), gpu_args=gpu_args, log=ctx.workdir / "vllm.log",
                                start_timeout=b.start_timeout_s).start()
        try:
            yield OpenAIEndpoint(server.url, "baseline", name="baseline")
        finally:
            server.stop()


def candidate_kind(recipe: Any) -> str:
    kind = str(recipe.gates.throughput.candidate.kind)
    if kind != "auto":
        return kind
    return "triton" if recipe.build.backend == "reference" else "trtllm-serve"
