"""Start the reference OpenAI server (openai_server.py) as a subprocess on loopback, wait for it, stop it.

The client side of the CPU analog of trtllm-serve: the accuracy gate opens one for the candidate
bundle and one for the source checkpoint, and points lm-eval's `local-completions` at `.url`.
Modelled on pipeline/bench/vllm_server.py.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import requests

from pipeline.errors import ServiceError
from pipeline.util.net import free_port
from pipeline.util.proc import start_server, stop_process_group


@dataclass
class ReferenceOpenAIServer(AbstractContextManager["ReferenceOpenAIServer"]):
    python: str
    bundle: Path | None = None
    checkpoint: Path | None = None
    activations: bool = False
    served_name: str = "reference"
    max_batch_size: int | None = None
    max_seq_len: int | None = None
    log: Path = Path("reference-openai.log")
    start_timeout: float = 300.0
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None  # of the stopped server: 0 when SIGTERM shut it down cleanly

    def __post_init__(self) -> None:
        if (self.bundle is None) == (self.checkpoint is None):
            raise ValueError("ReferenceOpenAIServer needs exactly one of bundle= and checkpoint=")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        src = ["--bundle", str(self.bundle)] if self.bundle is not None else ["--checkpoint", str(self.checkpoint)]
        argv = [self.python, "-m", "pipeline.backends.reference.openai_server", *src,
                "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", self.served_name]
        if self.activations:
            argv.append("--activations")
        if self.max_batch_size is not None:
            argv += ["--max-batch-size", str(self.max_batch_size)]
        if self.max_seq_len is not None:
            argv += ["--max-seq-len", str(self.max_seq_len)]
        return argv

    def start(self) -> ReferenceOpenAIServer:
        if not Path(self.python).exists():
            raise ServiceError(f"interpreter {self.python} not found")
        self.port = self.port or free_port()
        self.proc = start_server(self.argv(), self.log, ready=self._ready, timeout=self.start_timeout,
                                 what=f"reference OpenAI server on port {self.port}", interval=0.5, env=_env())
        return self

    def _ready(self) -> bool:
        r = requests.get(f"{self.url}/v1/models", timeout=2)
        return r.status_code == 200 and any(m["id"] == self.served_name for m in r.json().get("data", []))

    def stop(self) -> None:
        if self.proc is not None:
            self.returncode = stop_process_group(self.proc, grace=15)
            self.proc = None

    def __enter__(self) -> ReferenceOpenAIServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _env() -> dict[str, str]:
    """The server runs this launcher's copy of `pipeline`, not whichever one `python` would import first."""
    root = str(Path(__file__).resolve().parents[3])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}

