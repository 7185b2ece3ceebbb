"""Reference runtime: batched == single, streaming, stop conditions, sampling, logprobs."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from pipeline.backends.reference.runtime import ReferenceRuntime, SamplingParams
from tests.tiny_model import make_model, make_tokenizer

PROMPTS = ["The object", "A class definition", "Exceptions are raised", "import", "def f(x):",
           "The with statement is used", "Lambda", "Comparisons can be chained arbitrarily"]


@pytest.fixture(scope="module")
def runtime() -> Any:
    rt = ReferenceRuntime(make_model(), make_tokenizer(), max_batch_size=8, max_seq_len=256).start()
    yield rt
    rt.stop()


def hf_greedy(rt: ReferenceRuntime, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([rt.encode(prompt)])
    out = rt.model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=2)
    return [int(t) for t in out[0, ids.shape[1]:]]


def test_greedy_matches_transformers_generate(runtime: ReferenceRuntime) -> None:
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    for p in PROMPTS[:3]:
        assert runtime.generate(p, params).token_ids == hf_greedy(runtime, p, 12)


def test_batched_concurrent_equals_single(runtime: ReferenceRuntime) -> None:
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    single = [runtime.generate(p, params).token_ids for p in PROMPTS]
    before = runtime.step_count
    barrier = threading.Barrier(len(PROMPTS))
    results: dict[int, list[int]] = {}

    def go(i: int) -> None:
        barrier.wait()
        results[i] = runtime.generate(PROMPTS[i], params).token_ids

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(PROMPTS))] == single
    # batched: 8 requests of 10 tokens each alone would take 80 steps
    assert runtime.step_count - before < 2 * 10 + len(PROMPTS), "concurrent requests were batched"


def test_different_lengths_finish_independently(runtime: ReferenceRuntime) -> None:
    futs = [runtime.submit(p, SamplingParams(max_tokens=n, ignore_eos=True))
            for p, n in zip(PROMPTS, [1, 5, 9], strict=False)]
    assert [len(f.result(timeout=60).token_ids) for f in futs] == [1, 5, 9]
    assert all(f.result().finish_reason == "length" for f in futs)


def test_streaming_callback_sees_every_token(runtime: ReferenceRuntime) -> None:
    seen: list[tuple[int, str]] = []
    g = runtime.generate("The object", SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True),
                         on_token=lambda t, d, lp: seen.append((t, d)))
    assert [t for t, _ in seen] == g.token_ids
    assert "".join(d for _, d in seen) == g.text
    assert g.logprobs is not None and len(g.logprobs) == 8 and all(lp <= 0 for lp in g.logprobs)


def test_stop_token_and_stop_string(runtime: ReferenceRuntime) -> None:
    base = runtime.generate("The object", SamplingParams(max_tokens=8, ignore_eos=True))
    stop_tok = base.token_ids[3]
    g = runtime.generate("The object", SamplingParams(max_tokens=8, ignore_eos=True, stop_token_ids=(stop_tok,)))
    assert g.finish_reason == "stop" and g.token_ids == base.token_ids[: base.token_ids.index(stop_tok)]
    if len(base.text.strip()) > 2:
        s = base.text.strip()[1:3]
        g = runtime.generate("The object", SamplingParams(max_tokens=8, ignore_eos=True, stop=(s,)))
        assert g.finish_reason == "stop" and s not in g.text


def test_sampling_is_seeded_and_differs_from_greedy(runtime: ReferenceRuntime) -> None:
    p = SamplingParams(max_tokens=12, temperature=1.5, top_k=50, top_p=0.95, seed=7, ignore_eos=True)
    a, b = runtime.generate("Lambda", p).token_ids, runtime.generate("Lambda", p).token_ids
    assert a == b
    greedy = runtime.generate("Lambda", SamplingParams(max_tokens=12, ignore_eos=True)).token_ids
    other = runtime.generate("Lambda", SamplingParams(max_tokens=12, temperature=1.5, seed=8, ignore_eos=True))
    assert a != greedy or other.token_ids != greedy


def test_too_long_is_refused(runtime: ReferenceRuntime) -> None:
    with pytest.raises(ValueError, match="exceeds max_seq_len 256"):
        runtime.generate("x " * 300, SamplingParams(max_tokens=4))


def test_score_matches_forward(runtime: ReferenceRuntime) -> None:
    ids = runtime.encode("The object is here")
    lp = runtime.score(ids)
    assert lp.shape == (len(ids) - 1, 384)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(len(ids) - 1), atol=1e-4)


def test_test_hooks_stretch_every_step_and_reject_bad_values() -> None:
    """Lower bounds only (sleeps guarantee them): the floor and the planted fault apply per token."""
    import time

    from pipeline.backends.reference.pacing import FAULT_ENV, MIN_STEP_ENV, StepPacing, pacing_from_env

    assert not pacing_from_env({}).active
    assert pacing_from_env({MIN_STEP_ENV: "0.02", FAULT_ENV: "0.1"}) == StepPacing(0.02, 0.1)
    with pytest.raises(ValueError, match=f"{FAULT_ENV}='ten': not a number"):
        pacing_from_env({FAULT_ENV: "ten"})
    with pytest.raises(ValueError, match=f"{MIN_STEP_ENV}='-1': must be >= 0"):
        pacing_from_env({MIN_STEP_ENV: "-1"})
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    for pacing, per_token in ((StepPacing(0.02), 0.02), (StepPacing(0.02, 0.5), 0.03)):
        rt = ReferenceRuntime(make_model(), make_tokenizer(), pacing=pacing).start()
        try:
            stamps: list[float] = []
            start = time.monotonic()
            rt.generate("The object", params, on_token=lambda *_, s=stamps: s.append(time.monotonic()))
        finally:
            rt.stop()
        # token k leaves after k + 1 stretched steps (prefill included), however busy the machine
        assert len(stamps) == 6
        assert all(t - start >= (k + 1) * per_token - 1e-6 for k, t in enumerate(stamps)), stamps
