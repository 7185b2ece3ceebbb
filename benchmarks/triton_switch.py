"""Version switch cost: trtbuild's switch_version vs Triton's own load, under client load.

Each round switches a two-version test model v1 -> v2 -> v1 twice: first the bare way (rewrite
version_policy, one load call, timed on the load call alone: Triton's own load time), then with
switch_version (config parse/render, atomic write, lock, load, readiness check, optional smoke).
Two client threads (HTTP SSE and gRPC streams) send requests back to back the whole time;
every failed request is counted.

    python benchmarks/triton_switch.py --rounds 10 [--smoke] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.repository import pbtxt  # noqa: E402
from pipeline.repository.switch import switch_version  # noqa: E402
from pipeline.triton.client import LLMClient  # noqa: E402
from pipeline.triton.control import ModelControl  # noqa: E402
from pipeline.triton.server import TritonServer, locate_tritonserver  # noqa: E402
from pipeline.util import atomic  # noqa: E402
from tests.integration.triton_fixtures import BackgroundLoad, write_echo_model  # noqa: E402


def bare_switch(control: ModelControl, repo: Path, model: str, version: int) -> float:
    """What a hand-written switch does; returns Triton's load time alone."""
    cfg = repo / model / "config.pbtxt"
    atomic.write_text(cfg, pbtxt.with_version_policy(cfg.read_text(), specific=[version]))
    return control.load(model, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.004, help="model seconds per token")
    parser.add_argument("--smoke", action="store_true", help="run a generate smoke check")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()

    repo = Path(tempfile.mkdtemp(prefix="triton-switch-bench-"))
    write_echo_model(repo, "echo", versions={1: "ok", 2: "ok"}, policy=[1], delay_s=args.delay)
    bare: list[float] = []
    ours_total: list[float] = []
    ours_load: list[float] = []
    windows: list[tuple[float, float]] = []
    with TritonServer(locate_tritonserver(None)).start(repo, load=["echo"]) as server:
        control = ModelControl(server.http_url)
        client = LLMClient(server.http_url, server.grpc_url, timeout=30)

        def smoke(v: int) -> None:
            gen = client.generate("echo", "smoke check", version=v, timeout=10)
            if gen.text != "smoke check ":
                raise RuntimeError(f"smoke check got {gen.text!r}")

        with BackgroundLoad(client, "echo") as load:
            time.sleep(0.5)
            for _ in range(args.rounds):
                for target in (2, 1):
                    t0 = time.monotonic()
                    bare.append(bare_switch(control, repo, "echo", target))
                    windows.append((t0, time.monotonic()))
                    time.sleep(0.1)
                for target in (2, 1):
                    t0 = time.monotonic()
                    res = switch_version(control, repo, "echo", target, timeout=120,
                                         smoke=smoke if args.smoke else None)
                    windows.append((t0, time.monotonic()))
                    ours_total.append(res.total_s)
                    ours_load.append(res.load_s)
                    time.sleep(0.1)
            time.sleep(0.3)
        records = load.snapshot()

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    def p90(xs: list[float]) -> float:
        return sorted(xs)[max(0, round(0.9 * len(xs)) - 1)]

    during = [r for r in records if any(a <= r.sent <= b for a, b in windows)]
    summary = {
        "switches": len(bare) + len(ours_total),
        "triton_load_s_median": round(med(bare), 4),
        "triton_load_s_p90": round(p90(bare), 4),
        "switch_version_s_median": round(med(ours_total), 4),
        "switch_version_s_p90": round(p90(ours_total), 4),
        "switch_version_load_part_s_median": round(med(ours_load), 4),
        "ratio_median": round(med(ours_total) / med(bare), 3),
        "added_s_median": round(med(ours_total) - med(bare), 4),
        "overhead_s_median": round(med([t - ld for t, ld in zip(ours_total, ours_load,
                                                                 strict=True)]), 4),
        "smoke": args.smoke,
        "requests": len(records),
        "requests_during_switches": len(during),
        "failed_requests": sum(r.error is not None for r in records),
        "failed_during_switches": sum(r.error is not None for r in during),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:36s} {v}")
    return 1 if summary["failed_requests"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
