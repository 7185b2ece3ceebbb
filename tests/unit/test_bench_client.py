"""The load generator's correctness: HTTP framing, SSE splitting, the byte-level fast paths against
a full JSON parse, connection reuse and failures (real sockets on 127.0.0.1), and the paced
stand-in's own TTFT. No timing thresholds: these catch wrong numbers, not slow ones."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator

import pytest
import requests

from pipeline.bench import http
from pipeline.bench.client import (
    SSE,
    OpenAIEndpoint,
    RequestRecord,
    TritonEndpoint,
    openai_event,
    openai_message,
    triton_event,
    triton_message,
)
from pipeline.bench.harness import run_point
from pipeline.util.net import free_port
from tests.unit.test_bench_harness import paced_server

OPENAI = [
    b'{"choices": [{"index": 0, "text": " tok"}]}',
    b'{"id":"x","choices":[{"index":0,"text":"a","logprobs":null,"finish_reason":null}],"usage":null}',
    b'{"choices": [{"index": 0, "text": ""}], "usage": null}',  # empty text: no token time
    b'{"choices": [{"index": 0, "text" :  ""}]}',
    b'{"choices": [{"index": 0, "text": null}]}',
    b'{"choices": [{"index": 0}]}',
    b'{"choices": []}',
    b'{"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}}',
    b'{"choices": [{"text": "z"}], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}',
    b'{"choices": [{"index": 0, "text": "\\"text\\": \\"\\""}]}',  # a key-like string inside the text
    b'{"choices": [{"index": 0, "text": "\\"error\\": 1"}]}',
    b'{"error": {"message": "boom"}}',
    b'{"error": null, "choices": [{"text": "q"}]}',
    b'{"object": "text", "choices": [{"text": "w"}]}',
]
TRITON = [
    b'{"model_name": "m", "text_output": " tok", "output_token_count": [1]}',
    b'{"text_output":"ab","output_token_count":[2]}',
    b'{"text_output": "", "output_token_count": [0]}',
    b'{"text_output": "a", "output_token_count": 3}',
    b'{"text_output": "a", "output_token_count": [4, 9]}',
    b'{"text_output": "a", "output_token_count": [1.0]}',
    b'{"text_output": "a"}',
    b'{"error": "planted failure"}',
    b'{"text_output": "\\"output_token_count\\": [7]", "output_token_count": [1]}',
]


def _record(rec: RequestRecord) -> tuple[object, ...]:
    return (rec.chunk_times, rec.output_tokens, rec.prompt_tokens, rec.error)


@pytest.mark.parametrize("payload", OPENAI)
def test_openai_fast_path_decides_as_a_full_parse(payload: bytes) -> None:
    fast, full = RequestRecord(start=0.0), RequestRecord(start=0.0)
    assert openai_event(fast, payload, 1.0) == openai_message(full, json.loads(payload), 1.0)
    assert _record(fast) == _record(full)


@pytest.mark.parametrize("payload", TRITON)
def test_triton_fast_path_decides_as_a_full_parse(payload: bytes) -> None:
    fast, full = RequestRecord(start=0.0), RequestRecord(start=0.0)
    assert triton_event(fast, payload, 1.0) == triton_message(full, json.loads(payload), 1.0)
    assert _record(fast) == _record(full)


def test_done_and_bad_json() -> None:
    rec = RequestRecord(start=0.0)
    assert openai_event(rec, b"[DONE]", 1.0) is False and _record(rec) == ([], 0, None, None)
    with pytest.raises(ValueError):
        openai_event(rec, b'{"choices": [{"text": ', 1.0)


STREAM = (b'data: {"a": 1}\n\n: a comment\n\nevent: x\ndata: {"b": 2}\n\n'
          b'data: {"c":\ndata: 3}\n\ndata: [DONE]\n\n')
WANT = [b'{"a": 1}', b'{"b": 2}', b'{"c":', b"3}", b"[DONE]"]


@pytest.mark.parametrize("crlf", [False, True])
def test_sse_split_anywhere_gives_the_same_events(crlf: bool) -> None:
    stream = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    ends, pos = [], 0
    for event in stream.split(sep)[:-1]:
        pos += len(event) + len(sep)
        ends.append(pos)
    event_of = [0, 2, 3, 3, 4]  # event 1 is a comment: no data
    for cut in range(1, len(stream)):
        got: list[tuple[bytes, float]] = []
        sse = SSE(lambda payload, now, got=got: got.append((payload, now)) and False)
        sse(stream[:cut], 1.0)
        sse(stream[cut:], 2.0)
        assert [p for p, _ in got] == WANT, cut
        # an event's time is when the bytes that completed it arrived
        assert [t for _, t in got] == [1.0 if ends[e] <= cut else 2.0 for e in event_of], cut


CHUNKED = (b"HTTP/1.1 100 Continue\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
           b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nhello 012345678"
CLOSE = b"HTTP/1.0 200 OK\r\n\r\nhello 012345678"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno model!"


def _parse(raw: bytes, splits: list[int]) -> tuple[http.Response, bytes, bool]:
    async def go() -> tuple[http.Response, bytes, bool]:
        conn = http._Conn()
        body: list[bytes] = []
        done: asyncio.Future[http.Response] = asyncio.get_running_loop().create_future()
        conn._reset(lambda data, now: body.append(data) and False, done)
        prev = 0
        for cut in [*splits, len(raw)]:
            conn.data_received(raw[prev:cut])
            prev = cut
        if not done.done():
            conn.connection_lost(None)
        return await done, b"".join(body), conn.keep_alive

    return asyncio.run(go())


@pytest.mark.parametrize(("raw", "body", "status", "keep"), [
    (CHUNKED, b"hello 0123456789", 200, True), (LENGTH, b"hello 012345678", 200, True),
    (CLOSE, b"hello 012345678", 200, False), (NOT_FOUND, b"", 404, True)])
def test_http_framing_split_anywhere(raw: bytes, body: bytes, status: int, keep: bool) -> None:
    for cut in range(len(raw) + 1):
        resp, got, keep_alive = _parse(raw, [cut])
        assert (resp.status, got, keep_alive) == (status, body, keep), cut
        assert resp.body == (b"no model!" if status == 404 else b"")
    resp, got, _ = _parse(raw, list(range(1, len(raw))))  # one byte per read
    assert (resp.status, got) == (status, body)


def test_http_garbage_is_an_error() -> None:
    with pytest.raises(http.HTTPError, match="not an HTTP response"):
        _parse(b"SSH-2.0-OpenSSH\r\n\r\n", [])
    with pytest.raises(http.HTTPError, match="bad chunk size"):
        _parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", [])
    with pytest.raises(http.HTTPError, match="connection lost"):
        _parse(LENGTH[:-3], [])  # closed before Content-Length bytes came


@contextlib.asynccontextmanager
async def scripted(reply: bytes, *, close_after: bool = False,
                   hang: bool = False) -> AsyncIterator[tuple[str, list[int]]]:
    """A real server on 127.0.0.1 answering every request with `reply`; yields (url, accepted)."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if hang:
                    await asyncio.sleep(30)
                writer.write(reply)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", accepted


SSE_REPLY = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in [
                 b'data: {"choices": [{"text": "a"}]}\n\n', b'data: {"choices": [{"text": "b"}]}\n\n',
                 b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2}}\n\n',
                 b"data: [DONE]\n\n"]) + b"0\r\n\r\n")


def test_connections_are_reused_and_a_closed_one_replaced() -> None:
    async def go() -> None:
        async with scripted(SSE_REPLY) as (url, accepted), http.Session(timeout=10) as session:
            recs = [await OpenAIEndpoint(url, "m").stream(session, "p", 2) for _ in range(3)]
            assert [(r.ok, r.output_tokens, len(r.chunk_times)) for r in recs] == [(True, 2, 2)] * 3
            assert len(accepted) == 1  # keep-alive
            assert all(r.start <= r.chunk_times[0] <= r.chunk_times[1] <= r.end for r in recs)
        async with scripted(SSE_REPLY, close_after=True) as (url, accepted), http.Session(timeout=10) as session:
            recs = [await OpenAIEndpoint(url, "m").stream(session, "p", 2) for _ in range(3)]
            assert [r.error for r in recs] == [None] * 3 and len(accepted) == 3

    asyncio.run(go())


def test_failures_become_record_errors() -> None:
    async def go() -> None:
        async with http.Session(timeout=5) as session:
            rec = await OpenAIEndpoint(f"http://127.0.0.1:{free_port()}", "m").stream(session, "p", 2)
            assert rec.error is not None and rec.error.startswith("ConnectionError: cannot connect")
        async with scripted(NOT_FOUND) as (url, _), http.Session(timeout=5) as session:
            rec = await TritonEndpoint(url, "m").stream(session, "p", 2)
            assert rec.error == "HTTP 404: no model!"
        async with scripted(SSE_REPLY, hang=True) as (url, _), http.Session(timeout=0.3) as session:
            rec = await OpenAIEndpoint(url, "m").stream(session, "p", 2)
            assert rec.error is not None and rec.error.startswith("TimeoutError")
        bad = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ndata: {x\n\n"
        async with scripted(bad) as (url, _), http.Session(timeout=5) as session:
            rec = await OpenAIEndpoint(url, "m").stream(session, "p", 2)
            assert rec.error is not None and rec.error.startswith("bad stream message")

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["openai", "triton"])
def test_stand_in_reports_its_own_ttft_and_the_client_sees_no_less(kind: str) -> None:
    with paced_server("--delay-ms", "5") as url:
        requests.post(f"{url}/paced/reset", timeout=10).raise_for_status()
        ep = OpenAIEndpoint(url, "m") if kind == "openai" else TritonEndpoint(url, "m")
        point = asyncio.run(run_point(ep, ["p"] * 12, output_len=4, concurrency=4, warmup=2))
        server = requests.get(f"{url}/paced/ttft", timeout=10).json()["ttft_s"]
        assert point.failed == 0 and point.output_tokens == 12 * 4
        assert len(server) == 12 + 2 and all(t >= 0.005 for t in server)
        # the client's clock starts before the request leaves and stops after the token arrives
        assert sorted(point.ttft_samples)[0] >= sorted(server[-12:])[0]
        assert point.ttft["p50"] >= sorted(server[-12:])[5]
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the measured window gave the GC back


def test_body_time_is_taken_when_the_bytes_arrive() -> None:
    async def go() -> None:
        conn = http._Conn()
        times: list[float] = []
        done: asyncio.Future[http.Response] = asyncio.get_running_loop().create_future()
        conn._reset(lambda data, now: times.append(now) and False, done)
        conn.data_received(LENGTH[:-5])
        before = time.perf_counter()
        conn.data_received(LENGTH[-5:])
        after = time.perf_counter()
        assert len(times) == 2 and times[0] < before <= times[1] <= after
        assert (await done).status == 200

    asyncio.run(go())


def test_a_point_measured_in_a_child_process_comes_back_whole() -> None:
    from pipeline.bench.isolated import measure_in_child

    with paced_server("--fail-every", "5") as url:
        point = measure_in_child(TritonEndpoint(url, "m", name="cand"), ["p"] * 10, output_len=3, concurrency=2,
                                 workload="w", warmup=0)
    assert (point.endpoint, point.workload, point.requests, point.failed) == ("cand", "w", 10, 2)
    assert point.output_tokens == 8 * 3 and len(point.ttft_samples) == 8
    assert "planted failure" in point.errors[0]
