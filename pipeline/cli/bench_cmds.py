"""bench: the throughput gate's harness, ad hoc, against any OpenAI or Triton endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pipeline.cli import common
from pipeline.cli.output import Output
from pipeline.errors import UsageError


def parse_concurrency(value: str) -> list[int]:
    try:
        levels = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or any(c < 1 for c in levels):
        raise UsageError(f"--concurrency {value!r}: expected positive integers separated by commas, e.g. 1,4,16")
    return sorted(set(levels))


def load_tokenizer(path: Path | None) -> tuple[Any, str]:
    """The model's tokenizer, or whitespace words when none is given (the report says which)."""
    from pipeline.bench.workload import WordTokenizer

    if path is None:
        return WordTokenizer(), "whitespace words, no --tokenizer"
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path), str(path)
    except (OSError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UsageError(f"--tokenizer {path}: cannot load a tokenizer there ({reason})") from None


def rich_table(points: list[Any]) -> Any:
    from rich import box
    from rich.table import Table

    # compact, so it fits 80 columns (stderr of a CI job) without wrapping the headers
    t = Table(title="trtbuild bench (TTFT, TPOT, ITL in ms; E2E in s)", title_justify="left", box=box.SIMPLE,
              pad_edge=False, padding=(0, 0))
    for col in ("conc", "req/s", "tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "ITL p99", "E2E p50", "failed"):
        t.add_column(col, justify="right")
    for p in sorted(points, key=lambda p: p.concurrency):
        t.add_row(str(p.concurrency), f"{p.req_s:.2f}", f"{p.output_tok_s:.1f}", f"{p.ttft['p50'] * 1e3:.1f}",
                  f"{p.ttft['p99'] * 1e3:.1f}", f"{p.tpot['p50'] * 1e3:.2f}", f"{p.itl['p99'] * 1e3:.2f}",
                  f"{p.e2e['p50']:.2f}", f"[red]{p.failed}[/]" if p.failed else "0")
    return t


def write_report(report_dir: Path, result: dict[str, Any], points: list[Any]) -> list[str]:
    from pipeline.bench.criteria import table
    from pipeline.bench.plots import plot
    from pipeline.util import atomic

    report_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(report_dir / "bench.json", json.dumps(
        {**result, "points": [p.to_json() for p in points]}, indent=2, sort_keys=True))
    head = f"## trtbuild bench: {result['url']} ({result['kind']}, model {result['model']})"
    w = result["workload"]
    lines = [head, "", f"Workload {w['kind']}: {w['num_prompts']} prompts of {w['input_len']} tokens "
             f"(counted as {result['tokenizer']}), {w['output_len']} output tokens (ignore_eos), "
             f"{result['trials']} trial(s), median shown.", "", *table(points), ""]
    lines += [f"- {p.endpoint}@{p.concurrency}: {x}" for p in points for x in p.warnings]
    atomic.write_text(report_dir / "bench.md", "\n".join(lines) + "\n")
    ttfts = {f"{p.endpoint}@{p.concurrency}": p.ttft_samples for p in points}
    pngs = plot(points, ttfts, report_dir)
    return [str(report_dir / "bench.json"), str(report_dir / "bench.md"), *(str(p) for p in pngs)]


@click.command()
@click.option("--url", required=True, help="Base URL of the server, http://host:port.")
@click.option("--kind", required=True, type=click.Choice(["openai", "triton"]),
              help="openai: POST /v1/completions (vLLM, trtllm-serve); triton: /v2/models/M/generate_stream.")
@click.option("--model", help="Model name (default: the only ready model the server lists).")
@click.option("--workload", "workload_kind", type=click.Choice(["unique", "shared-prefix"]), default="unique",
              show_default=True, help="Traffic shape.")
@click.option("--input-len", type=click.IntRange(min=1), default=128, show_default=True, help="Prompt tokens.")
@click.option("--output-len", type=click.IntRange(min=1), default=64, show_default=True,
              help="Output tokens per request (ignore_eos).")
@click.option("--num-prompts", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests per trial and concurrency.")
@click.option("--prefixes", type=click.IntRange(min=1), default=4, show_default=True, help="shared-prefix only.")
@click.option("--prefix-len", type=click.IntRange(min=1), default=96, show_default=True,
              help="Tokens of each shared prefix (shared-prefix only; < --input-len).")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Concurrency sweep, comma-separated.")
@click.option("--trials", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trials per concurrency; the median (by output tok/s) is reported.")
@click.option("--warmup", type=click.IntRange(min=0), default=4, show_default=True,
              help="Unmeasured requests before each trial.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The model's tokenizer directory (default: prompt lengths in whitespace words).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds one request may take.")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write bench.json, bench.md and PNG plots here.")
@common
def bench(url: str, kind: str, model: str | None, workload_kind: str, input_len: int, output_len: int,
          num_prompts: int, prefixes: int, prefix_len: int, concurrency: str, trials: int, warmup: int,
          tokenizer: Path | None, timeout: float, report_dir: Path | None, json_mode: bool) -> None:
    """Measure an endpoint with the throughput gate's client: TTFT, TPOT, ITL, tok/s per concurrency."""
    from pipeline.bench import probe
    from pipeline.bench.harness import median_point
    from pipeline.bench.isolated import measure_in_child
    from pipeline.bench.workload import make_prompts

    out = Output(json_mode=json_mode)
    levels = parse_concurrency(concurrency)
    if workload_kind == "shared-prefix" and prefix_len >= input_len:
        raise UsageError(f"--prefix-len {prefix_len} must be smaller than --input-len {input_len}")
    url = probe.check_url(url)
    name = probe.pick_model(url, kind, model)
    ep = probe.endpoint(url, kind, name)
    probe.preflight(ep, url, kind, timeout=min(timeout, 120.0))
    tok, tok_desc = load_tokenizer(tokenizer)
    prompts = make_prompts(tok, kind=workload_kind, num_prompts=num_prompts, input_len=input_len,
                           prefixes=prefixes, prefix_len=prefix_len)
    out.human(f"bench {url} ({kind}, model {name}): {num_prompts} prompts x {output_len} tokens, "
              f"concurrency {levels}, {trials} trial(s)")
    points, per_trial = [], {}
    for c in levels:
        runs = [measure_in_child(ep, prompts.texts, output_len=output_len, concurrency=c,
                                 workload=workload_kind, warmup=warmup, timeout=timeout)
                for _ in range(trials)]
        points.append(median_point(runs))
        per_trial[str(c)] = [p.output_tok_s for p in runs]
        out.human(f"  concurrency {c}: {points[-1].output_tok_s:.1f} tok/s, {points[-1].failed} failed")
    result: dict[str, Any] = {
        "url": url, "kind": kind, "model": name, "tokenizer": tok_desc, "trials": trials,
        "workload": {"kind": workload_kind, "input_len": input_len, "output_len": output_len,
                     "num_prompts": num_prompts, "prefixes": prefixes, "prefix_len": prefix_len,
                     "input_tokens_mean": sum(prompts.input_tokens) / len(prompts.input_tokens)},
        "trials_output_tok_s": per_trial,
    }
    if report_dir is not None:
        result["files"] = write_report(report_dir, result, points)
    out.human(rich_table(points))
    for p in points:
        for w in p.warnings + [f"{p.failed} failed: {'; '.join(p.errors)}"] * bool(p.failed):
            out.human(f"[yellow]concurrency {p.concurrency}: {w}[/]")
    # stdout stays small: per-request TTFT samples are in the report file only
    out.result({**result, "points": [{k: v for k, v in p.to_json().items() if k != "ttft_samples"}
                                     for p in points]})


def register(group: click.Group) -> None:
    group.add_command(bench)
