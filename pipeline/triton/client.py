"""Generation client for Triton LLM models with the TensorRT-LLM ensemble interface.

Inputs `text_input` (BYTES), `max_tokens` (INT32) and optional sampling inputs (`temperature`,
`top_k`, `top_p`, `end_id`, `stream`, ...); output `text_output` (BYTES). The same client
talks to the inflight_batcher_llm ensemble on a GPU host and to the reference python model here.

Transports:
  - HTTP `POST /v2/models/M/generate_stream` (server-sent events). Triton reports a failed
    request as an event with an `error` field (HTTP 200): that raises GenerationError.
  - HTTP `POST /v2/models/M/generate`: one response, for stream=False.
  - gRPC bidirectional streaming (tritonclient.grpc `start_stream` / `async_stream_infer`).

Every call is bounded by `timeout` (whole request) and, for HTTP streams, `read_timeout`
(silence between two events). Each result says which model version answered.

    client = LLMClient(server.http_url, server.grpc_url)
    gen = client.stream("llm", "Hello", max_tokens=32)              # HTTP SSE
    gen = client.stream("llm", "Hello", max_tokens=32, transport="grpc")
    print(gen.text, gen.model_version, gen.ttft_s)
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import numpy as np

from pipeline.errors import ServiceError
from pipeline.triton import _http

# Triton datatypes of the TensorRT-LLM ensemble's inputs (inflight_batcher_llm/ensemble).
INPUT_DTYPES: dict[str, str] = {
    "text_input": "BYTES", "max_tokens": "INT32", "bad_words": "BYTES", "stop_words": "BYTES",
    "end_id": "INT32", "pad_id": "INT32", "top_k": "INT32", "top_p": "FP32",
    "temperature": "FP32", "length_penalty": "FP32", "repetition_penalty": "FP32",
    "min_length": "INT32", "presence_penalty": "FP32", "frequency_penalty": "FP32",
    "random_seed": "UINT64", "beam_width": "INT32", "stream": "BOOL",
    "return_log_probs": "BOOL", "return_context_logits": "BOOL",
    "return_generation_logits": "BOOL", "exclude_input_in_output": "BOOL", "ignore_eos": "BOOL",
}
_NP = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "UINT64": np.uint64,
       "FP32": np.float32, "BOOL": np.bool_}
_META = frozenset({"model_name", "model_version", "id", "parameters"})

Transport = Literal["http", "grpc"]


class GenerationError(ServiceError):
    """A generation request failed: an error from the model or server, or a timeout."""


@dataclass
class Generation:
    """What one request produced."""

    pieces: list[str] = field(default_factory=list)  # text_output of each response, in order
    model_version: int | None = None  # the version that answered, as the server reports it
    ttft_s: float | None = None  # seconds from sending to the first non-empty piece
    elapsed_s: float = 0.0
    piece_times: list[float] = field(default_factory=list)  # seconds since sending, per piece
    extra: list[dict[str, Any]] = field(default_factory=list)  # other outputs, per response

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class LLMClient:
    """Generation requests to one Triton server.

    `http_url` is `http://host:port`; `grpc_url` is `host:port` (needed for transport="grpc").
    """

    def __init__(self, http_url: str, grpc_url: str | None = None, *, timeout: float = 120.0,
                 read_timeout: float = 60.0) -> None:
        self.http_url = http_url.rstrip("/")
        self.grpc_url = grpc_url
        self.timeout = timeout
        self.read_timeout = read_timeout
        self._batched: dict[str, bool] = {}

    def stream(self, model: str, prompt: str, *, max_tokens: int = 64,
               transport: Transport = "http", version: int | None = None,
               timeout: float | None = None, on_piece: Callable[[str], None] | None = None,
               **inputs: Any) -> Generation:
        """Streamed generation (`stream=True` unless given). Extra keyword arguments are model
        inputs (temperature=0.7, top_k=40, end_id=2, ...)."""
        values = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, **inputs}
        t = self.timeout if timeout is None else timeout
        if transport == "http":
            return self._stream_http(model, values, version, t, on_piece)
        if transport == "grpc":
            return self._stream_grpc(model, values, version, t, on_piece)
        raise ValueError(f"transport must be 'http' or 'grpc', got {transport!r}")

    def generate(self, model: str, prompt: str, *, max_tokens: int = 64,
                 version: int | None = None, timeout: float | None = None,
                 **inputs: Any) -> Generation:
        """One-response generation through `POST /v2/models/M/generate` (`stream=False`)."""
        values = {"text_input": prompt, "max_tokens": max_tokens, "stream": False, **inputs}
        t = self.timeout if timeout is None else timeout
        url = self._model_url(model, version) + "/generate"
        t0 = time.monotonic()
        try:
            status, body = _http.request("POST", url, body=_jsonable(values), timeout=t)
        except (_http.HTTPTimeoutError, _http.HTTPUnreachableError) as e:
            raise GenerationError(f"generate on model '{model}': {e}") from e
        gen = Generation()
        try:
            event = json.loads(body)
        except ValueError as e:
            raise GenerationError(f"generate on model '{model}': HTTP {status}: "
                                  f"{body[:300].decode(errors='replace')}") from e
        self._add_event(gen, event, model, time.monotonic() - t0, None)
        if status != 200:
            raise GenerationError(f"generate on model '{model}': HTTP {status}: {event}")
        gen.elapsed_s = time.monotonic() - t0
        return gen

    # -- HTTP ------------------------------------------------------------------------------

    def _model_url(self, model: str, version: int | None) -> str:
        url = f"{self.http_url}/v2/models/{quote(model, safe='')}"
        return url if version is None else f"{url}/versions/{int(version)}"

    def _stream_http(self, model: str, values: dict[str, Any], version: int | None,
                     timeout: float, on_piece: Callable[[str], None] | None) -> Generation:
        url = self._model_url(model, version) + "/generate_stream"
        gen = Generation()
        t0 = time.monotonic()
        try:
            for line in _http.stream_lines(url, body=_jsonable(values), timeout=timeout,
                                           read_timeout=min(self.read_timeout, timeout)):
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                payload = line[5:].strip()
                if not payload:
                    continue
                try:
                    event = json.loads(payload)
                except ValueError as e:
                    raise GenerationError(f"generate_stream on model '{model}': bad event "
                                          f"{payload[:200]!r}") from e
                self._add_event(gen, event, model, time.monotonic() - t0, on_piece)
        except _http.HTTPStatusError as e:
            raise GenerationError(f"generate_stream on model '{model}': {e}") from e
        except (_http.HTTPTimeoutError, _http.HTTPUnreachableError) as e:
            raise GenerationError(f"generate_stream on model '{model}': {e} "
                                  f"(after {len(gen.pieces)} pieces)") from e
        gen.elapsed_s = time.monotonic() - t0
        return gen

    @staticmethod
    def _add_event(gen: Generation, event: Any, model: str, at: float,
                   on_piece: Callable[[str], None] | None) -> None:
        if not isinstance(event, dict):
            raise GenerationError(f"model '{model}': unexpected response {event!r:.200}")
        if "error" in event:
            raise GenerationError(f"model '{model}' answered with an error: {event['error']}")
        if event.get("model_version") not in (None, ""):
            gen.model_version = int(event["model_version"])
        text = event.get("text_output")
        if text is not None:
            piece = "".join(str(x) for x in _flatten(text))
            _add_piece(gen, piece, at, on_piece)
        gen.extra.append({k: v for k, v in event.items() if k not in _META and k != "text_output"})

    # -- gRPC ------------------------------------------------------------------------------

    def _stream_grpc(self, model: str, values: dict[str, Any], version: int | None,
                     timeout: float, on_piece: Callable[[str], None] | None) -> Generation:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        if not self.grpc_url:
            raise GenerationError("transport='grpc' needs the client's grpc_url (host:port)")
        results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client = grpcclient.InferenceServerClient(self.grpc_url)
        gen = Generation()
        try:
            batched = self._is_batched(client, model, timeout)
            inputs = [_grpc_input(grpcclient, name, value, batched)
                      for name, value in values.items() if value is not None]
            t0 = time.monotonic()
            deadline = t0 + timeout
            client.start_stream(callback=lambda result, error: results.put((result, error)),
                                stream_timeout=timeout)
            client.async_stream_infer(model, inputs,
                                      model_version="" if version is None else str(version),
                                      enable_empty_final_response=True)
            while True:
                remaining = deadline - time.monotonic()
                try:
                    result, error = results.get(timeout=max(remaining, 0.001))
                except queue.Empty:
                    client.stop_stream(cancel_requests=True)
                    raise GenerationError(f"gRPC stream on model '{model}': not finished after "
                                          f"{timeout:g}s ({len(gen.pieces)} pieces)") from None
                if error is not None:
                    raise GenerationError(f"gRPC stream on model '{model}': {error}")
                at = time.monotonic() - t0
                resp = result.get_response()
                if resp.model_version:
                    gen.model_version = int(resp.model_version)
                if any(o.name == "text_output" for o in resp.outputs):
                    arr = result.as_numpy("text_output")
                    piece = "".join(_text(x) for x in np.asarray(arr).reshape(-1))
                    _add_piece(gen, piece, at, on_piece)
                others = {o.name: result.as_numpy(o.name).tolist() for o in resp.outputs
                          if o.name != "text_output"}
                if others:
                    gen.extra.append(others)
                final = resp.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    break
            gen.elapsed_s = time.monotonic() - t0
            client.stop_stream()
            return gen
        except InferenceServerException as e:
            raise GenerationError(f"gRPC stream on model '{model}': {e}") from e
        finally:
            client.close()

    def _is_batched(self, client: Any, model: str, timeout: float) -> bool:
        """Whether the model has a batch dimension (max_batch_size > 0): inputs are [1, n]."""
        if model not in self._batched:
            cfg = client.get_model_config(model, as_json=True, client_timeout=timeout)
            config = cfg.get("config", cfg)
            self._batched[model] = int(config.get("max_batch_size", 0) or 0) > 0
        return self._batched[model]


def _grpc_input(grpcclient: Any, name: str, value: Any, batched: bool) -> Any:
    dtype = INPUT_DTYPES.get(name) or _infer_dtype(value)
    items = list(value) if isinstance(value, list | tuple) else [value]
    if dtype == "BYTES":
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in items]
    arr: np.ndarray[Any, Any] = np.array(items, dtype=_NP[dtype])
    if batched:
        arr = arr.reshape(1, -1)
    inp = grpcclient.InferInput(name, list(arr.shape), dtype)
    inp.set_data_from_numpy(arr)
    return inp


def _infer_dtype(value: Any) -> str:
    first = value[0] if isinstance(value, list | tuple) and value else value
    if isinstance(first, bool):
        return "BOOL"
    if isinstance(first, int):
        return "INT32"
    if isinstance(first, float):
        return "FP32"
    return "BYTES"


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _flatten(x: Any) -> list[Any]:
    if isinstance(x, list):
        return [y for item in x for y in _flatten(item)]
    return [x]


def _text(x: Any) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else str(x)


def _add_piece(gen: Generation, piece: str, at: float,
               on_piece: Callable[[str], None] | None) -> None:
    gen.pieces.append(piece)
    gen.piece_times.append(at)
    if piece and gen.ttft_s is None:
        gen.ttft_s = at
    if on_piece is not None:
        on_piece(piece)
