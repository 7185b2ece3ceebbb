"""The reference OpenAI server: a real subprocess on loopback, checked against the in-process runtime.

The in-process runtime loads the same tiny checkpoint the same way (load_checkpoint), so
greedy text and logprobs must agree; lm-eval's own parser reads the responses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from pipeline.backends.reference.openai_launch import ReferenceOpenAIServer
from pipeline.backends.reference.openai_protocol import parse_request, top_dict
from pipeline.backends.reference.openai_server import Engine, load_checkpoint
from pipeline.backends.reference.runtime import ReferenceRuntime, SamplingParams
from tests.tiny_model import make_model, make_tokenizer, save_tiny_checkpoint

pytestmark = pytest.mark.integration

NAME = "tiny"
MAX_SEQ_LEN = 64
TEXTS = ["The object", "A class definition is an executable statement", "def f(x):"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceOpenAIServer]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    srv = ReferenceOpenAIServer(sys.executable, checkpoint=checkpoint, served_name=NAME, max_seq_len=MAX_SEQ_LEN,
                                log=log, start_timeout=120)
    with srv:
        yield srv
    assert srv.returncode == 0, f"SIGTERM did not shut the server down cleanly: {log.read_text()[-2000:]}"
    assert (f"openai server: model {NAME} on {srv.url} (checkpoint {checkpoint}; max_batch_size 8, "
            f"max_num_tokens 8192, max_kv_tokens {8 * MAX_SEQ_LEN})") in log.read_text()


@pytest.fixture(scope="module")
def runtime(checkpoint: Path) -> Iterator[ReferenceRuntime]:
    rt = load_checkpoint(checkpoint, max_seq_len=MAX_SEQ_LEN)
    yield rt
    rt.stop()


@pytest.fixture(scope="module")
def greedy_ids(runtime: ReferenceRuntime) -> list[int]:
    """A prompt whose last 3 tokens are the model's own greedy continuation: is_greedy is True there."""
    ids = runtime.encode(TEXTS[0])
    return ids + runtime.generate(ids, SamplingParams(max_tokens=3, ignore_eos=True)).token_ids


def post(server: ReferenceOpenAIServer, **body: Any) -> requests.Response:
    return requests.post(f"{server.url}/v1/completions", json={"model": NAME, **body}, timeout=60)


def complete(server: ReferenceOpenAIServer, **body: Any) -> dict[str, Any]:
    r = post(server, **body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def next_token_logprobs(rt: ReferenceRuntime, ids: list[int]) -> torch.Tensor:
    return rt.score(ids).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)


def test_models_and_unknown_model(server: ReferenceOpenAIServer) -> None:
    models = requests.get(f"{server.url}/v1/models", timeout=10).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [NAME]
    r = requests.post(f"{server.url}/v1/completions", json={"model": "other", "prompt": "x"}, timeout=10)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == 404
    assert "other" in r.json()["error"]["message"]


def test_echo_logprobs_match_score(server: ReferenceOpenAIServer, runtime: ReferenceRuntime,
                                   greedy_ids: list[int]) -> None:
    ids = [runtime.encode(t) for t in TEXTS] + [greedy_ids]
    out = complete(server, prompt=ids, max_tokens=1, logprobs=1, echo=True, temperature=0, seed=1234)
    assert [c["index"] for c in out["choices"]] == list(range(len(ids)))
    for p, choice in zip(ids, out["choices"], strict=True):
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(p) + 1
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        score = runtime.score(p)
        assert torch.allclose(torch.tensor(lp["token_logprobs"][1:len(p)]), next_token_logprobs(runtime, p),
                              atol=1e-5)
        for i, (tok_lp, top) in enumerate(zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True)):
            assert 1 <= len(top) <= 2  # k=1 plus the actual token
            is_greedy = tok_lp == max(top.values())  # as lm-eval decides it
            if i + 1 < len(p):
                assert is_greedy == (int(score[i].argmax()) == p[i + 1])
            else:
                assert is_greedy, "the generated token is the greedy one"
    greedy = ids[-1]
    score = runtime.score(greedy)
    assert all(int(score[j - 1].argmax()) == greedy[j] for j in range(len(greedy) - 3, len(greedy)))
    prompt_only = complete(server, prompt=ids[1], max_tokens=0, logprobs=2, echo=True)["choices"][0]
    assert prompt_only["logprobs"]["token_logprobs"] == out["choices"][1]["logprobs"]["token_logprobs"][:-1]
    assert prompt_only["text"] == runtime.tokenizer.decode(ids[1])


def test_greedy_matches_runtime_one_at_a_time(server: ReferenceOpenAIServer, runtime: ReferenceRuntime) -> None:
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    want = [runtime.generate(t, params) for t in TEXTS]
    out = complete(server, prompt=TEXTS, max_tokens=8, ignore_eos=True, temperature=0)
    assert [c["text"] for c in out["choices"]] == [g.text for g in want]
    assert all(c["finish_reason"] == "length" for c in out["choices"])
    n_prompt = sum(len(runtime.encode(t)) for t in TEXTS)
    assert out["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 24, "total_tokens": n_prompt + 24}
    # a stop string taken from the middle of the first text cuts it there
    stop = next(want[0].text[i:i + 2] for i in range(1, 6) if "\ufffd" not in want[0].text[i:i + 2])
    cut = complete(server, prompt=TEXTS[0], max_tokens=8, ignore_eos=True, stop=[stop])["choices"][0]
    assert cut["text"] == want[0].text[: want[0].text.index(stop)]
    assert cut["finish_reason"] == "stop"


def test_stream_equals_non_stream(server: ReferenceOpenAIServer) -> None:
    body = {"prompt": TEXTS[:2], "max_tokens": 10, "ignore_eos": True}
    whole = complete(server, **body)
    r = requests.post(f"{server.url}/v1/completions", timeout=60, stream=True,
                      json={"model": NAME, **body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    lines = [ln[len(b"data: "):] for ln in r.iter_lines() if ln.startswith(b"data: ")]
    assert lines[-1] == b"[DONE]"
    chunks = [json.loads(ln) for ln in lines[:-1]]
    texts = ["", ""]
    for ch in chunks[:-1]:
        for c in ch["choices"]:
            texts[c["index"]] += c["text"]
    assert texts == [c["text"] for c in whole["choices"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_bad_input_is_400_and_server_stays_up(server: ReferenceOpenAIServer) -> None:
    for body in ({"prompt": list(range(3, 3 + MAX_SEQ_LEN))}, {"prompt": "x", "n": 2}, {"prompt": 5},
                 {"prompt": [[1, 2], "x"]}, {"prompt": [1, 10**6]}, {"prompt": "x", "max_tokens": 0},
                 {"prompt": "x", "temperature": "hot"}, {"prompt": "x", "logprobs": 1, "stream": True}):
        r = post(server, **body)
        assert r.status_code == 400, (body, r.text)
        msg = r.json()["error"]["message"]
        assert msg and "\n" not in msg and "Traceback" not in msg
    assert "maximum context length" in post(server, prompt=list(range(3, 3 + MAX_SEQ_LEN))).json()["error"]["message"]
    r = requests.post(f"{server.url}/v1/completions", data=b"{not json", timeout=10)
    assert r.status_code == 400
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    assert complete(server, prompt="x", max_tokens=2)["choices"][0]["finish_reason"] in ("length", "stop")


def test_stats_show_the_scheduler_back_at_rest(server: ReferenceOpenAIServer) -> None:
    complete(server, prompt="The object", max_tokens=4)
    stats = requests.get(f"{server.url}/stats", timeout=10).json()
    assert stats["max_batch_size"] == 8 and stats["max_num_tokens"] == 8192
    assert stats["max_kv_tokens"] == 8 * MAX_SEQ_LEN and stats["steps"] >= 0
    # what a non-streamed completion or a finished stream held is returned
    assert stats["running"] == 0 and stats["kv_reserved_tokens"] == 0 and stats["kv_cache_slots"] == 0


def test_bad_scheduler_limit_is_one_line_and_exit_2(checkpoint: Path) -> None:
    import subprocess

    r = subprocess.run([sys.executable, "-m", "pipeline.backends.reference.openai_server", "--checkpoint",
                        str(checkpoint), "--max-batch-size", "4", "--max-num-tokens", "2"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == ("openai server: max_num_tokens (2) must be >= max_batch_size (4)")
    assert "Traceback" not in r.stderr


def test_sampling_is_reproducible_with_a_seed(server: ReferenceOpenAIServer) -> None:
    body = {"prompt": TEXTS[0], "max_tokens": 6, "temperature": 0.9, "top_p": 0.9, "top_k": 50, "seed": 7,
            "ignore_eos": True}
    assert complete(server, **body)["choices"] == complete(server, **body)["choices"]


def expected_loglikelihood(rt: ReferenceRuntime, ids: list[int], ctxlen: int) -> tuple[float, bool]:
    score = rt.score(ids)
    ll = float(next_token_logprobs(rt, ids)[ctxlen - 1:].sum())
    return ll, all(int(score[j - 1].argmax()) == ids[j] for j in range(ctxlen, len(ids)))


def test_lm_eval_parses_responses(server: ReferenceOpenAIServer, runtime: ReferenceRuntime,
                                  greedy_ids: list[int]) -> None:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    ids = [runtime.encode(t) for t in TEXTS] + [greedy_ids]
    ctxlens = [max(1, len(p) - 3) for p in ids]
    out = complete(server, prompt=ids, max_tokens=1, logprobs=1, echo=True, temperature=0, seed=1234)
    parsed = LocalCompletionsAPI.parse_logprobs(out, ctxlens=ctxlens)
    assert len(parsed) == len(ids)
    for p, ctx, (ll, greedy) in zip(ids, ctxlens, parsed, strict=True):
        want_ll, want_greedy = expected_loglikelihood(runtime, p, ctx)
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy
    assert parsed[-1][1], "the model's own continuation is greedy"
    gen = complete(server, prompt=ids, max_tokens=4, temperature=0, stop=["\n\n"], seed=1234)
    assert LocalCompletionsAPI.parse_generations(gen) == [c["text"] for c in gen["choices"]]


def test_lm_eval_local_completions_end_to_end(server: ReferenceOpenAIServer, runtime: ReferenceRuntime,
                                              checkpoint: Path) -> None:
    """lm-eval's own model class builds the requests (token ids, batched, no BOS) and parses the answers."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    lm = LocalCompletionsAPI(base_url=f"{server.url}/v1/completions", model=NAME, tokenizer=str(checkpoint),
                             tokenizer_backend="huggingface", batch_size=2, max_length=MAX_SEQ_LEN, max_gen_toks=6)
    pairs = [("The object", " is here"), ("def f(x):", " return x"), ("A class", " definition")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    for (ctx, cont), (ll, greedy) in zip(pairs, got, strict=True):
        ctx_ids, cont_ids = lm._encode_pair(ctx, cont)
        want_ll, want_greedy = expected_loglikelihood(runtime, ctx_ids + cont_ids, len(ctx_ids))
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy
    texts = lm.generate_until([Instance("generate_until", {}, (t, {"until": ["\n"], "max_gen_toks": 6}), i)
                               for i, t in enumerate(TEXTS[:2])])
    for t, text in zip(TEXTS[:2], texts, strict=True):
        ids = lm.tok_encode(t)  # lm-eval sends token ids without BOS
        assert text == runtime.generate(ids, SamplingParams(max_tokens=6, stop=("\n", "</s>"))).text


def test_forward_rows_are_score_bits(runtime: ReferenceRuntime) -> None:
    """The server's forward keeps the row after the last token; the others are score()'s, bit for bit."""
    engine = Engine(runtime)
    for n in (2, 3, 7, 8, 11, 31):
        ids = [(7 * i + 3) % 300 + 3 for i in range(n)]
        rows = engine._forward(ids)
        assert rows.shape[0] == n
        assert torch.equal(rows[:-1], runtime.score(ids))


def test_eos_stays_in_the_logprobs_as_vllm_keeps_it() -> None:
    """lm-eval sums token_logprobs[ctxlen:-1]: without the EOS entry it would drop the last prompt token."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    model = make_model()
    bump = torch.zeros(model.config.vocab_size)
    bump[2] = 50.0  # EOS (id 2) always wins
    model.lm_head.register_forward_hook(lambda _m, _a, out: out + bump)
    rt = ReferenceRuntime(model, make_tokenizer(), max_seq_len=64)
    engine = Engine(rt)
    try:
        for body in ({"max_tokens": 1, "echo": True}, {"max_tokens": 4, "echo": True, "temperature": 0.5, "seed": 1}):
            req = parse_request({"prompt": "The object", "logprobs": 1, **body}, "m")
            c = engine.complete(req, engine.prepare(req))[0]
            ids = c.prompt_ids
            assert (c.text, c.finish_reason, c.completion_tokens()) == ("", "stop", 1)
            assert c.logprobs is not None and c.logprobs["tokens"][-1] == "</s>"
            want = next_token_logprobs(rt, [*ids, 2])
            assert c.logprobs["token_logprobs"][1:] == pytest.approx(want.tolist(), abs=1e-5)
            resp = {"choices": [{"index": 0, "logprobs": c.logprobs}]}
            (ll, _), = LocalCompletionsAPI.parse_logprobs(resp, ctxlens=[len(ids) - 1])
            assert ll == pytest.approx(float(want[-2]), abs=1e-5)
    finally:
        rt.stop()


def test_top_dict_keeps_the_max_on_colliding_texts() -> None:
    # two ids decode to U+FFFD: the better one must not be hidden by the actual, worse one
    assert top_dict([("\ufffd", -0.5), ("a", -1.0)], "\ufffd", -3.0) == {"\ufffd": -0.5, "a": -1.0}
    # the actual token is the argmax: max(top.values()) is its own logprob
    top = top_dict([("\ufffd", -0.25)], "\ufffd", -0.25)
    assert max(top.values()) == -0.25
    assert top_dict([("a", -0.1)], "b", -2.0) == {"a": -0.1, "b": -2.0}
