"""trtllm-serve: TensorRT-LLM's OpenAI-compatible server, started on loopback for the accuracy gate.

The command line follows TensorRT-LLM 1.2's `trtllm-serve MODEL` (tensorrt_llm/commands/serve.py):
MODEL is an engine directory (`--backend tensorrt`, tokenizer via `--tokenizer`) or a Hugging Face /
ModelOpt checkpoint (`--backend pytorch`, LLM API options via `--extra_llm_api_options`).
1.2 has no `--served_model_name`: a local MODEL is reported by /v1/models under its directory
name, so the launcher reads the id from there instead of assuming it. Readiness is GET /health
(200 only after the model loaded). Its /v1/completions returns logprobs of generated tokens only,
never of the prompt, so lm-eval's loglikelihood tasks cannot run against it (see eval/lmeval.py).
"""

from __future__ import annotations

import subprocess
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import requests

from pipeline.bundle import load_bundle
from pipeline.errors import ServiceError
from pipeline.recipe.schema import Recipe, ServedBy
from pipeline.util.net import free_port
from pipeline.util.proc import start_server, stop_process_group


@dataclass
class TrtllmServe(AbstractContextManager["TrtllmServe"]):
    command: list[str]  # argv prefix: ["trtllm-serve"], or a container run ending in trtllm-serve
    model: Path
    backend: str  # "tensorrt" | "pytorch"
    tokenizer: Path | None = None
    options: Path | None = None  # an LLM API options YAML (pytorch backend)
    tp_size: int = 1
    pp_size: int = 1
    max_batch_size: int | None = None
    max_num_tokens: int | None = None
    max_seq_len: int | None = None
    # explicit, so that the plan can size it: the KV cache's share of what is free after the weights
    kv_cache_free_gpu_memory_fraction: float | None = None
    extra_args: list[str] = field(default_factory=list)
    log: Path = Path("trtllm-serve.log")
    start_timeout: float = 900.0
    port: int = 0
    served_name: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_model(cls, srv: ServedBy, recipe: Recipe, *, model: Path, tokenizer: Path,
                  log: Path) -> TrtllmServe:
        """A built bundle (tensorrt engine or pytorch checkpoint) or a plain checkpoint (pytorch)."""
        b = recipe.build
        plain = cls(command=list(srv.command), model=model, backend="pytorch", tokenizer=tokenizer,
                    tp_size=recipe.target.tensor_parallel, pp_size=recipe.target.pipeline_parallel,
                    max_batch_size=b.max_batch_size, max_num_tokens=b.max_num_tokens, max_seq_len=b.max_seq_len,
                    kv_cache_free_gpu_memory_fraction=srv.kv_cache_free_gpu_memory_fraction,
                    extra_args=list(srv.extra_args), log=log, start_timeout=float(srv.start_timeout_s))
        if not (model / "manifest.json").is_file():  # the unquantized source
            return plain
        bundle = load_bundle(model, verify=False)
        rt = bundle.manifest["runtime"]
        if bundle.backend == "tensorrt":
            return replace(plain, model=model / rt["engine"], backend="tensorrt", tokenizer=model / rt["tokenizer"])
        if bundle.backend == "pytorch":
            return replace(plain, model=model / rt["checkpoint"], options=model / rt["options"])
        raise ServiceError(f"{model}: a {bundle.backend} bundle is not served by trtllm-serve")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        cmd = [*self.command, str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
               "--backend", self.backend, "--tp_size", str(self.tp_size), "--pp_size", str(self.pp_size)]
        if self.tokenizer is not None:
            cmd += ["--tokenizer", str(self.tokenizer)]
        for flag, value in (("--max_batch_size", self.max_batch_size), ("--max_num_tokens", self.max_num_tokens),
                            ("--max_seq_len", self.max_seq_len),
                            ("--kv_cache_free_gpu_memory_fraction", self.kv_cache_free_gpu_memory_fraction)):
            if value is not None:
                cmd += [flag, str(value)]
        if self.options is not None:
            cmd += ["--extra_llm_api_options", str(self.options)]
        return [*cmd, *self.extra_args]

    def start(self) -> TrtllmServe:
        self.port = self.port or free_port()
        try:
            self.proc = start_server(self.argv(), self.log, ready=self._ready, timeout=self.start_timeout,
                                     what=f"trtllm-serve on port {self.port}", interval=2.0,
                                     role="trtllm-serve")
        except FileNotFoundError:
            raise ServiceError(f"{self.command[0]} not found; run the accuracy gate where TensorRT-LLM is installed "
                               "or set gates.accuracy.lm_eval.candidate.command (e.g. a container run)") from None
        return self

    def _ready(self) -> bool:
        if requests.get(f"{self.url}/health", timeout=2).status_code != 200:
            return False
        models = requests.get(f"{self.url}/v1/models", timeout=2).json().get("data", [])
        if models:
            self.served_name = str(models[0]["id"])
        return bool(models)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace=30)
            self.proc = None

    def __enter__(self) -> TrtllmServe:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

