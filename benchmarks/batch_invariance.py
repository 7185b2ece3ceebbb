"""How often in-flight batching changes a greedy token, against each request run alone.

    python benchmarks/batch_invariance.py BUNDLE_DIR [--tokens 32] [--concurrency 4,16] [--json]

The prompts are the shipped ones: the CPU recipe's throughput workloads (unique and shared-prefix,
made by the gate's own make_prompts from the bundle's tokenizer). Each is generated alone first,
then all of them through the scheduler at each concurrency, a new request submitted as one
finishes (as the throughput client does), so requests join batches of every width and row
count. CPU GEMM kernels are picked by shape, so a batched row can round differently from the
same row alone; a different greedy token then changes the rest of the text. Printed: requests
whose tokens differ, and the share of tokens from the first difference on (what a reader sees).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.backends.reference.invariance import measure, shipped_prompts


def main() -> None:
    from pipeline.backends.reference.serve import load_runtime

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--json", action="store_true", help="machine output on stdout")
    args = ap.parse_args()
    rt = load_runtime(args.bundle)
    try:
        result = measure(rt, shipped_prompts(rt.tokenizer), args.tokens,
                         [int(c) for c in args.concurrency.split(",")])
    finally:
        rt.stop()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for point, r in result.items():
        print(f"{point}: {r['requests_differing']}/{r['requests']} requests differ; "
              f"{r['tokens_after_divergence']}/{r['tokens']} tokens after a divergence "
              f"({r['token_mismatch_rate']:.1%})")


if __name__ == "__main__":
    main()
