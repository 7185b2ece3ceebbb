"""Reference-backend throughput (output tok/s) at concurrency 1, 4 and 16 on this CPU.

    python benchmarks/reference_throughput.py BUNDLE_DIR [--tokens 32] [--requests 16]

Runs the ReferenceRuntime in-process (no server) so later changes to the runtime can be compared;
prints tok/s per concurrency and the ratio to concurrency 1 (what batching buys).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from pipeline.backends.reference.runtime import SamplingParams
from pipeline.backends.reference.serve import load_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=16)
    args = ap.parse_args()
    rt = load_runtime(args.bundle)
    params = SamplingParams(max_tokens=args.tokens, ignore_eos=True)
    rt.generate("warm up", SamplingParams(max_tokens=4, ignore_eos=True))
    base = None
    print(f"{'concurrency':>11} {'tok/s':>8} {'x c=1':>6}")
    for c in (1, 4, 16):
        sem = threading.Semaphore(c)
        done = []

        def one(i: int, sem: threading.Semaphore = sem, done: list[int] = done) -> None:
            with sem:
                done.append(len(rt.generate(f"Request {i}: the object model", params).token_ids))

        start = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tps = sum(done) / (time.perf_counter() - start)
        base = base or tps
        print(f"{c:>11} {tps:>8.1f} {tps / base:>6.2f}")
    rt.stop()


if __name__ == "__main__":
    main()
