"""Batch invariance of the reference runtime: greedy tokens batched in flight vs each request alone.

CPU GEMM kernels are picked by shape and padding changes the attention sums, so a row decoded in a
batch can round differently from the same row alone; where that flips a greedy token the rest of
the text changes. `measure` counts it on the shipped prompts (the CPU recipe's throughput
workloads): the benchmark benchmarks/batch_invariance.py prints it and a test bounds it.
"""

from __future__ import annotations

import threading
from typing import Any

from pipeline.backends.reference.runtime import ReferenceRuntime, SamplingParams


def shipped_prompts(tokenizer: Any) -> list[str]:
    from pipeline.bench.workload import make_prompts

    unique = make_prompts(tokenizer, kind="unique", num_prompts=16, input_len=128)
    shared = make_prompts(tokenizer, kind="shared-prefix", num_prompts=16, input_len=128, prefixes=2, prefix_len=96)
    return [*unique.texts, *shared.texts]


def at_concurrency(rt: ReferenceRuntime, prompts: list[str], params: SamplingParams, c: int) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    sem = threading.Semaphore(c)

    def one(i: int) -> None:
        with sem:
            out[i] = rt.generate(prompts[i], params, timeout=600).token_ids

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [out[i] for i in range(len(prompts))]


def compare(alone: list[list[int]], batched: list[list[int]]) -> dict[str, Any]:
    differ = 0
    tokens = changed = 0
    for a, b in zip(alone, batched, strict=True):
        tokens += len(a)
        first = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        if first is not None:
            differ += 1
            changed += len(a) - first
    return {"requests": len(alone), "requests_differing": differ, "tokens": tokens, "tokens_after_divergence": changed,
            "request_mismatch_rate": differ / len(alone), "token_mismatch_rate": changed / tokens if tokens else 0.0}


def measure(rt: ReferenceRuntime, prompts: list[str], tokens: int, concurrency: list[int]) -> dict[str, Any]:
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    alone = [rt.generate(p, params, timeout=600).token_ids for p in prompts]
    return {f"c{c}": compare(alone, at_concurrency(rt, prompts, params, c)) for c in concurrency}
