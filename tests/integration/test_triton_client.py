"""Streaming generation against a real tritonserver: HTTP SSE, gRPC streams, errors, timeouts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.triton.client import GenerationError, LLMClient
from pipeline.triton.control import ModelControl
from pipeline.triton.server import TritonInstall, TritonServer
from tests.integration.triton_fixtures import triton_install, write_echo_model

pytestmark = pytest.mark.integration
__all__ = ["triton_install"]

PROMPT = "the quick brown fox jumps"


@pytest.fixture(scope="module")
def server(triton_install: TritonInstall, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_echo_model(repo, "echo", versions={1: "ok", 2: "ok"}, policy=[1, 2])
    write_echo_model(repo, "slow", delay_s=1.5)
    with TritonServer(triton_install).start(repo, load=["echo", "slow"]) as srv:
        yield srv


@pytest.fixture
def client(server: TritonServer) -> LLMClient:
    return LLMClient(server.http_url, server.grpc_url, timeout=30)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_stream_pieces_and_version(client: LLMClient, transport: str) -> None:
    seen: list[str] = []
    gen = client.stream("echo", PROMPT, max_tokens=4, transport=transport,  # type: ignore[arg-type]
                        temperature=0.5, top_k=3, top_p=0.9, end_id=2, on_piece=seen.append)
    assert gen.pieces == ["the ", "quick ", "brown ", "fox "] == seen
    assert gen.text == "the quick brown fox "
    # both versions are loaded: an unversioned request goes to the highest
    assert gen.model_version == 2
    assert [e["version"] for e in gen.extra if "version" in e] in ([2] * 4, [[2]] * 4)
    assert gen.ttft_s is not None and 0 < gen.ttft_s <= gen.elapsed_s
    assert gen.piece_times == sorted(gen.piece_times)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_stream_pinned_version(client: LLMClient, transport: str) -> None:
    gen = client.stream("echo", "a b", version=1, transport=transport)  # type: ignore[arg-type]
    assert gen.model_version == 1 and gen.text == "a b "


def test_generate_one_response(client: LLMClient) -> None:
    gen = client.generate("echo", PROMPT, max_tokens=3, version=1)
    assert gen.pieces == ["the quick brown "]
    assert gen.model_version == 1


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_model_error_raises(client: LLMClient, transport: str) -> None:
    with pytest.raises(GenerationError, match="asked to fail"):
        client.stream("echo", "__error__", transport=transport)  # type: ignore[arg-type]


def test_generate_error_raises(client: LLMClient) -> None:
    with pytest.raises(GenerationError, match="asked to fail"):
        client.generate("echo", "__error__")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_unknown_model_raises(client: LLMClient, transport: str) -> None:
    with pytest.raises(GenerationError, match="nope"):
        client.stream("nope", "a", transport=transport)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_slow_stream_is_bounded(client: LLMClient, transport: str, server: TritonServer) -> None:
    t0 = time.monotonic()
    with pytest.raises(GenerationError, match=r"1s|not finished"):
        client.stream("slow", "a b c", transport=transport, timeout=1)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 3
    ModelControl(server.http_url).wait_ready("slow", timeout=5)  # the model keeps serving


def test_grpc_needs_url(server: TritonServer) -> None:
    with pytest.raises(GenerationError, match="grpc_url"):
        LLMClient(server.http_url).stream("echo", "a", transport="grpc")


def test_unreachable_server_raises(tmp_path: Path) -> None:
    from pipeline.util.net import free_port

    with pytest.raises(GenerationError, match="generate_stream"):
        LLMClient(f"http://127.0.0.1:{free_port()}", timeout=2).stream("echo", "a")
