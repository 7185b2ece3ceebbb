"""In-flight batching in the reference runtime: joining mid-flight, limits per step, KV accounting."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest

from pipeline.backends.reference.runtime import Generation, ReferenceRuntime, SamplingParams
from pipeline.backends.reference.scheduler import Capacity, SchedulerConfig, admit, plan
from pipeline.backends.reference.serve import scheduler_options
from tests.tiny_model import make_model, make_tokenizer

PROMPTS = ["The object", "A class definition", "Exceptions are raised", "import", "def f(x):",
           "The with statement is used", "Lambda", "Comparisons can be chained arbitrarily"]
LONG = " ".join(PROMPTS * 3)  # longer than the small token budgets below


def make(**kw: Any) -> ReferenceRuntime:
    return ReferenceRuntime(make_model(), make_tokenizer(), max_seq_len=256, **kw).start()


def drain(rt: ReferenceRuntime, timeout: float = 30) -> None:
    """Wait until the scheduler holds nothing (it frees a request's KV right after its last token)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = rt.stats()
        if s["running"] == 0 and s["waiting"] == 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"scheduler still busy: {rt.stats()}")


@pytest.fixture(scope="module")
def runtime() -> Any:
    rt = make(max_batch_size=8)
    yield rt
    rt.stop()


def test_a_request_joins_mid_flight_and_finishes_first(runtime: ReferenceRuntime) -> None:
    """Wave batching fails this: the short request would wait for the long one's whole batch."""
    started = threading.Event()
    finished: dict[str, float] = {}
    long = runtime.submit("The object", SamplingParams(max_tokens=60, ignore_eos=True),
                          on_token=lambda *_: started.set())
    long.add_done_callback(lambda _f: finished.setdefault("long", time.monotonic()))
    assert started.wait(30)
    short = runtime.submit("import", SamplingParams(max_tokens=3, ignore_eos=True))
    short.add_done_callback(lambda _f: finished.setdefault("short", time.monotonic()))
    assert len(short.result(timeout=60).token_ids) == 3
    assert not long.done(), "the short request waited for the running one"
    assert len(long.result(timeout=60).token_ids) == 60
    assert finished["short"] < finished["long"]


def test_staggered_arrivals_give_the_tokens_of_single_runs(runtime: ReferenceRuntime) -> None:
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    single = [runtime.generate(p, params).token_ids for p in PROMPTS]
    futs = []
    for p in PROMPTS:  # each joins a batch already decoding, at another width and row count
        futs.append(runtime.submit(p, params))
        time.sleep(0.005)
    assert [f.result(timeout=60).token_ids for f in futs] == single


def test_max_batch_size_is_never_exceeded_and_is_reached() -> None:
    rt = make(max_batch_size=3)
    try:
        futs = [rt.submit(p, SamplingParams(max_tokens=6, ignore_eos=True)) for p in PROMPTS]
        assert all(len(f.result(timeout=60).token_ids) == 6 for f in futs)
        steps = list(rt.steps)
        assert max(s.batch for s in steps) == 3 and max(s.running for s in steps) == 3
    finally:
        rt.stop()


def test_token_budget_per_step_with_chunked_prefill() -> None:
    rt = make(max_batch_size=4, max_num_tokens=8)
    wide = make(max_batch_size=4, max_num_tokens=4096)
    try:
        params = SamplingParams(max_tokens=8, ignore_eos=True)
        n_long = len(rt.encode(LONG))
        assert n_long > 3 * 8
        decoding = [rt.submit(p, params) for p in PROMPTS[:3]]
        long = rt.submit(LONG, params)
        assert [len(f.result(timeout=60).token_ids) for f in decoding] == [8, 8, 8]
        chunked = long.result(timeout=60).token_ids
        steps = list(rt.steps)
        assert all(s.decode_tokens + s.prefill_tokens <= 8 for s in steps), steps
        assert sum(s.prefill_tokens for s in steps) == n_long + sum(len(rt.encode(p)) for p in PROMPTS[:3])
        # the long prompt went in over several steps, alongside the others' decode tokens
        assert sum(1 for s in steps if s.prefill_tokens and s.decode_tokens) >= 2
        assert chunked == wide.generate(LONG, params).token_ids, "chunked prefill changed the greedy tokens"
    finally:
        rt.stop()
        wide.stop()


def test_kv_budget_bounds_admission_and_accounting_returns_to_zero() -> None:
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    need = len(make_tokenizer()("The object")["input_ids"]) + 10
    rt = make(max_batch_size=8, max_kv_tokens=2 * need + 1)  # room for two requests at a time, not three
    try:
        futs = [rt.submit("The object", params) for _ in range(6)]
        assert all(len(f.result(timeout=60).token_ids) == 10 for f in futs)
        steps = list(rt.steps)
        assert max(s.kv_reserved for s in steps) <= rt.config.max_kv_tokens
        assert max(s.running for s in steps) == 2  # the budget, not max_batch_size, limited the batch
        drain(rt)
        assert rt.stats()["kv_reserved_tokens"] == 0 and rt.stats()["kv_cache_slots"] == 0
        with pytest.raises(ValueError, match=f"max_kv_tokens {2 * need + 1}"):
            rt.generate("The object", SamplingParams(max_tokens=2 * need))
    finally:
        rt.stop()


def test_cancelled_request_leaves_and_frees_its_kv(runtime: ReferenceRuntime) -> None:
    seen: list[int] = []
    first = threading.Event()

    def on_token(tok: int, _d: str, _lp: float | None) -> None:
        seen.append(tok)
        first.set()

    fut = runtime.submit("The object", SamplingParams(max_tokens=200, ignore_eos=True), on_token=on_token)
    other = runtime.submit("import", SamplingParams(max_tokens=30, ignore_eos=True))
    assert first.wait(30)
    assert fut.cancel()
    with pytest.raises(CancelledError):
        fut.result()
    assert len(other.result(timeout=60).token_ids) == 30  # the batch goes on without it
    drain(runtime)
    assert len(seen) < 200
    assert runtime.stats()["kv_reserved_tokens"] == 0 and runtime.stats()["kv_cache_slots"] == 0


def test_a_raising_callback_fails_its_request_only(runtime: ReferenceRuntime) -> None:
    def broken(*_: Any) -> None:
        raise ConnectionResetError("client gone")

    params = SamplingParams(max_tokens=6, ignore_eos=True)
    bad = runtime.submit("The object", params, on_token=broken)
    good = runtime.submit("import", params)
    with pytest.raises(ConnectionResetError):
        bad.result(timeout=60)
    assert len(good.result(timeout=60).token_ids) == 6
    drain(runtime)
    assert runtime.stats()["kv_reserved_tokens"] == 0


def test_streams_stops_and_logprobs_while_batched(runtime: ReferenceRuntime) -> None:
    alone = runtime.generate("The object", SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True))
    stop = alone.text.strip()[1:3]
    seen: list[str] = []
    futs: list[Future[Generation]] = [runtime.submit(p, SamplingParams(max_tokens=8, ignore_eos=True))
                                      for p in PROMPTS[1:4]]
    streamed = runtime.submit("The object", SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True),
                              on_token=lambda _t, d, _lp: seen.append(d))
    stopped = runtime.submit("The object", SamplingParams(max_tokens=8, ignore_eos=True, stop=(stop,)))
    g = streamed.result(timeout=60)
    assert g.token_ids == alone.token_ids and "".join(seen) == g.text
    assert g.logprobs is not None and g.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    s = stopped.result(timeout=60)
    assert s.finish_reason == "stop" and stop not in s.text and alone.text.startswith(s.text)
    assert all(f.result(timeout=60).finish_reason == "length" for f in futs)


# ---------------------------------------------------------------------------------------------- pure scheduling


def test_plan_gives_every_decode_a_token_then_chunks_in_order() -> None:
    cfg = SchedulerConfig(max_batch_size=4, max_num_tokens=10).check(256)
    p = plan(3, [0, 5, 9], cfg)
    assert p.decode == 3 and p.prefill == [(1, 5), (2, 2)] and p.tokens == 10 and p.batch == 5
    assert plan(0, [30], cfg).prefill == [(0, 10)]


def test_admit_keeps_arrival_order_and_both_limits() -> None:
    cfg = SchedulerConfig(max_batch_size=3, max_num_tokens=64, max_kv_tokens=100).check(256)
    cap = Capacity(cfg.max_kv_tokens)
    assert admit(deque([40, 70, 10]), 0, cfg, cap) == 1  # 70 does not fit: 10 behind it waits too
    assert cap.reserved == 40
    assert admit(deque([10, 10, 10]), 1, cfg, cap) == 2  # batch size 3
    cap.give_back(60)
    with pytest.raises(RuntimeError, match="below zero"):
        cap.give_back(1)


def test_bad_limits_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"max_num_tokens \(2\) must be >= max_batch_size \(4\)"):
        SchedulerConfig(max_batch_size=4, max_num_tokens=2).check(256)
    assert SchedulerConfig(max_batch_size=4, max_num_tokens=8).check(256).max_kv_tokens == 4 * 256


def test_options_come_from_flags_then_environment_then_bundle() -> None:
    facts = {"max_batch_size": 16, "max_num_tokens": 2048}
    assert scheduler_options(facts, env={}) == {"max_batch_size": 16, "max_num_tokens": 2048, "max_kv_tokens": 0}
    env = {"TRTBUILD_REF_MAX_BATCH_SIZE": "4", "TRTBUILD_REF_MAX_KV_TOKENS": "4096"}
    got = scheduler_options(facts, env=env, overrides={"max_batch_size": 2, "max_num_tokens": None})
    assert got == {"max_batch_size": 2, "max_num_tokens": 2048, "max_kv_tokens": 4096}
    with pytest.raises(ValueError, match=r"^TRTBUILD_REF_MAX_NUM_TOKENS='lots': not an integer"):
        scheduler_options(facts, env={"TRTBUILD_REF_MAX_NUM_TOKENS": "lots"})
    with pytest.raises(ValueError, match=r"^bundle runtime.max_batch_size=0: must be >= 1"):
        scheduler_options({"max_batch_size": 0}, env={})
