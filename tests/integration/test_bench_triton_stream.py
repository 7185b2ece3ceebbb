"""The load generator's own HTTP client against a real tritonserver's generate_stream framing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from pipeline.bench.client import RequestRecord, TritonEndpoint
from pipeline.bench.http import Session
from pipeline.triton.server import TritonInstall, TritonServer
from tests.integration.triton_fixtures import triton_install, write_echo_model

pytestmark = pytest.mark.integration
__all__ = ["triton_install"]


@pytest.fixture(scope="module")
def server(triton_install: TritonInstall, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_echo_model(repo, "echo")
    with TritonServer(triton_install).start(repo, load=["echo"]) as srv:
        yield srv


def _streams(url: str, model: str, prompts: list[str]) -> list[RequestRecord]:
    async def go() -> list[RequestRecord]:
        async with Session(timeout=30) as session:
            return [await TritonEndpoint(url, model).stream(session, p, 4) for p in prompts]

    return asyncio.run(go())


def test_events_errors_and_reuse_on_real_triton(server: TritonServer) -> None:
    # the echo model sends text_output without output_token_count: the first event is read and
    # refused (the gate never re-tokenizes), on a kept-alive connection, request after request
    recs = _streams(server.http_url, "echo", ["a b c"] * 3)
    assert [r.error for r in recs] == ["response lacks output_token_count; cannot count tokens without "
                                       "re-tokenizing"] * 3
    # an error the model raises comes inside the HTTP 200 stream
    (rec,) = _streams(server.http_url, "echo", ["__error__"])
    assert rec.error is not None and "the test model was asked to fail" in rec.error
    (rec,) = _streams(server.http_url, "nope", ["a"])
    assert rec.error is not None and rec.error.startswith("HTTP 4"), rec.error
