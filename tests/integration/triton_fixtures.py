"""A tiny decoupled python-backend test model and fixtures that run a real tritonserver.

The model has the LLM interface of the TensorRT-LLM ensemble (`text_input`, `max_tokens`,
`stream`, sampling inputs -> `text_output`) and streams back the words of its input, one
response per word, plus a `version` output with its own version number. Each version can
be written in a mode: "ok", "broken" (initialize raises) or "hang" (initialize never returns).
This is a test model; the reference LLM model lives in pipeline/backends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.repository.pbtxt import render_pbtxt
from pipeline.triton.client import LLMClient
from pipeline.triton.server import TritonInstall, TritonServer, locate_tritonserver

MODEL_PY = '''\
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

MODE = {mode!r}
DELAY_S = {delay!r}


def _scalar(request, name, default):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    v = t.as_numpy().reshape(-1)
    return v[0] if v.size else default


class TritonPythonModel:
    def initialize(self, args):
        if MODE == "broken":
            raise RuntimeError("broken test model: initialize raises")
        while MODE == "hang":
            time.sleep(1)
        self.version = int(args["model_version"])

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()

    def _serve(self, request):
        sender = request.get_response_sender()
        try:
            text = _scalar(request, "text_input", b"")
            text = text.decode() if isinstance(text, bytes) else str(text)
            if text == "__error__":
                raise ValueError("the test model was asked to fail")
            n = int(_scalar(request, "max_tokens", 16))
            words = [w + " " for w in text.split()[:n]]
            if bool(_scalar(request, "stream", False)):
                for w in words:
                    time.sleep(DELAY_S)
                    sender.send(self._response(w))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                time.sleep(DELAY_S * len(words))
                sender.send(self._response("".join(words)),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:
            error = pb_utils.TritonError(str(e))
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response(self, text):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_)),
            pb_utils.Tensor("version", np.array([self.version], dtype=np.int32)),
        ])
'''


def echo_config(name: str, policy: Sequence[int]) -> dict[str, object]:
    def inp(n: str, dtype: str, optional: bool = True) -> dict[str, object]:
        return {"name": n, "data_type": dtype, "dims": [1], "optional": optional}

    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "model_transaction_policy": {"decoupled": True},
        "version_policy": {"specific": {"versions": list(policy)}},
        "input": [inp("text_input", "TYPE_STRING", False), inp("max_tokens", "TYPE_INT32", False),
                  inp("stream", "TYPE_BOOL"), inp("temperature", "TYPE_FP32"),
                  inp("top_k", "TYPE_INT32"), inp("top_p", "TYPE_FP32"),
                  inp("end_id", "TYPE_INT32")],
        "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [1]},
                   {"name": "version", "data_type": "TYPE_INT32", "dims": [1]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    }


def write_echo_model(repo: Path, name: str = "echo", versions: Mapping[int, str] | None = None,
                     policy: Sequence[int] = (1,), delay_s: float = 0.0) -> Path:
    """Write the test model into `repo/name` with one directory per version and mode."""
    model_dir = repo / name
    for version, mode in (versions or {1: "ok"}).items():
        vdir = model_dir / str(version)
        vdir.mkdir(parents=True, exist_ok=True)
        (vdir / "model.py").write_text(MODEL_PY.format(mode=mode, delay=delay_s))
    (model_dir / "config.pbtxt").write_text(render_pbtxt(echo_config(name, policy)))
    return model_dir


@pytest.fixture(scope="session")
def triton_install() -> TritonInstall:
    """The tritonserver of this host (the nvidia-pytriton wheel's on a CPU machine).

    Its backend directory and stub venv live in the default cache ($TRTBUILD_CACHE_DIR or
    ~/.cache/trtbuild), so they are built once per machine, not once per test run.
    """
    return locate_tritonserver(None)


@pytest.fixture
def start_triton(triton_install: TritonInstall) -> Iterator[Callable[..., TritonServer]]:
    """start_triton(repo, load=[...], **start_kwargs): a started server, stopped after the test."""
    servers: list[TritonServer] = []

    def start(repo: Path, **kwargs: object) -> TritonServer:
        server = TritonServer(triton_install)
        servers.append(server)
        return server.start(repo, **kwargs)  # type: ignore[arg-type]

    yield start
    for server in servers:
        server.stop()


@dataclass
class Record:
    transport: str
    sent: float
    done: float
    version: int | None
    text: str
    error: str | None = None


@dataclass
class BackgroundLoad:
    """Threads that send streaming requests back to back until stopped, recording each."""

    client: LLMClient
    model: str
    prompt: str = "one two three"
    transports: Sequence[str] = ("http", "grpc")
    records: list[Record] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> BackgroundLoad:
        for transport in self.transports:
            t = threading.Thread(target=self._run, args=(transport,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self, transport: str) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                gen = self.client.stream(self.model, self.prompt, max_tokens=8,
                                         transport=transport, timeout=20)  # type: ignore[arg-type]
                rec = Record(transport, sent, time.monotonic(), gen.model_version, gen.text)
            except Exception as e:  # every failure is recorded and counted by the test
                rec = Record(transport, sent, time.monotonic(), None, "", error=str(e))
            with self._lock:
                self.records.append(rec)

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    def failures(self) -> list[Record]:
        return [r for r in self.snapshot() if r.error is not None]
