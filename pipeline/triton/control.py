"""Triton's model control and readiness API over HTTP, every call bounded by a timeout.

A python-backend stub that never starts (or a model whose `initialize` never returns) makes
`POST /v2/repository/models/M/load` block forever, and later loads of the same model queue
behind it. Nothing here waits without a timeout; a load that times out raises
ModelLoadError(timed_out=True) and the server keeps trying in the background.

    control = ModelControl("http://127.0.0.1:8000")
    control.load("llm", timeout=300)
    control.wait_ready("llm", 2, timeout=30)
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pipeline.errors import ServiceError
from pipeline.triton import _http


class ModelLoadError(ServiceError):
    """Triton refused to load a model, or did not finish within the timeout."""

    def __init__(self, message: str, *, model: str, timed_out: bool = False) -> None:
        self.model = model
        self.timed_out = timed_out
        super().__init__(message)


@dataclass(frozen=True)
class ModelState:
    """One row of Triton's repository index."""

    name: str
    version: int | None
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str = ""


class ModelControl:
    """Client for one server's HTTP endpoint (`http://host:port`).

    `timeout` bounds the quick calls (health, index, readiness, metadata); load and unload
    take their own.
    """

    def __init__(self, http_url: str, *, timeout: float = 10.0) -> None:
        self.url = http_url.rstrip("/")
        self.timeout = timeout

    def live(self) -> bool:
        return self._status("GET", "/v2/health/live") == 200

    def server_ready(self) -> bool:
        return self._status("GET", "/v2/health/ready") == 200

    def index(self, *, ready_only: bool = False) -> list[ModelState]:
        """Every model version the repository knows, with its state."""
        rows = self._json("POST", "/v2/repository/index", {"ready": ready_only})
        out = []
        for row in rows or []:
            version = row.get("version")
            out.append(ModelState(name=row["name"], version=int(version) if version else None,
                                  state=row.get("state", ""), reason=row.get("reason", "")))
        return out

    def load(self, name: str, *, timeout: float = 300.0,
             config: str | dict[str, Any] | None = None, files: dict[str, bytes] | None = None) -> float:
        """Load or reload `name` from the repository; returns the seconds the server took.

        With `config` (JSON text or dict) Triton uses it instead of config.pbtxt, without
        writing it anywhere; `files` ({"1/model.py": bytes}, needs `config`) makes Triton load
        the model from those files in a temporary directory of its own, not from the repository.
        Raises ModelLoadError with Triton's reason, or timed_out=True.
        """
        body: dict[str, Any] = {}
        if config is not None:
            text = config if isinstance(config, str) else json.dumps(config)
            params: dict[str, str] = {"config": text}
            params.update({f"file:{path}": base64.b64encode(data).decode() for path, data in (files or {}).items()})
            body["parameters"] = params
        url = self.url + self._path("/v2/repository/models/{}/load", name)
        t0 = time.monotonic()
        try:
            status, data = _http.request("POST", url, body=body, timeout=timeout)
        except _http.HTTPTimeoutError as e:
            raise ModelLoadError(
                f"loading model '{name}' did not finish in {timeout:g}s; the server may still be "
                "loading it (a python model whose stub or initialize hangs never finishes)",
                model=name, timed_out=True) from e
        except _http.HTTPUnreachableError as e:
            raise ServiceError(f"loading model '{name}': server unreachable: {e}") from e
        if status != 200:
            raise ModelLoadError(
                f"Triton refused to load model '{name}': {_http.error_message(data)}", model=name)
        return time.monotonic() - t0

    def unload(self, name: str, *, timeout: float = 60.0, unload_dependents: bool = False) -> None:
        """Unload every version of `name`. Returns once Triton accepted it (in-flight requests
        finish first, on the server's side)."""
        body = {"parameters": {"unload_dependents": unload_dependents}}
        url = self.url + self._path("/v2/repository/models/{}/unload", name)
        try:
            status, data = _http.request("POST", url, body=body, timeout=timeout)
        except (_http.HTTPTimeoutError, _http.HTTPUnreachableError) as e:
            raise ServiceError(f"unloading model '{name}': {e}") from e
        if status != 200:
            raise ServiceError(
                f"Triton refused to unload model '{name}': {_http.error_message(data)}")

    def is_ready(self, name: str, version: int | None = None) -> bool:
        """Whether `name` (or that version of it) answers inference requests now."""
        return self._status("GET", self._model_path(name, version) + "/ready") == 200

    def ready_versions(self, name: str) -> list[int]:
        """Versions of `name` that are READY, ascending (from the repository index)."""
        return sorted(s.version for s in self.index()
                      if s.name == name and s.state == "READY" and s.version is not None)

    def wait_unloaded(self, name: str, *, timeout: float, interval: float = 0.05) -> float:
        """Poll until no version of `name` is READY (its GPU memory is being freed); seconds waited."""
        t0 = time.monotonic()
        while self.ready_versions(name):
            if time.monotonic() - t0 >= timeout:
                raise ServiceError(f"model {name} still READY {timeout:g}s after its unload")
            time.sleep(interval)
        return time.monotonic() - t0

    def wait_ready(self, name: str, version: int | None = None, *, timeout: float,
                   interval: float = 0.05) -> float:
        """Poll until ready; returns the seconds waited. Raises ServiceError on timeout."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = ""
        while True:
            try:
                if self.is_ready(name, version):
                    return time.monotonic() - t0
            except ServiceError as e:
                last = f" (last error: {e})"
            if time.monotonic() >= deadline:
                what = name if version is None else f"{name} version {version}"
                raise ServiceError(f"model {what} not ready after {timeout:g}s{last}")
            time.sleep(interval)

    def metadata(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Model metadata: name, versions (ready ones), platform, inputs, outputs."""
        return dict(self._json("GET", self._model_path(name, version)))

    def config(self, name: str, version: int | None = None) -> dict[str, Any]:
        """The configuration the server uses for the model, as JSON."""
        return dict(self._json("GET", self._model_path(name, version) + "/config"))

    # -- internals -------------------------------------------------------------------------

    def _model_path(self, name: str, version: int | None) -> str:
        path = self._path("/v2/models/{}", name)
        return path if version is None else f"{path}/versions/{int(version)}"

    @staticmethod
    def _path(template: str, name: str) -> str:
        return template.format(quote(name, safe=""))

    def _status(self, method: str, path: str) -> int:
        try:
            status, _ = _http.request(method, self.url + path, timeout=self.timeout)
        except (_http.HTTPTimeoutError, _http.HTTPUnreachableError) as e:
            raise ServiceError(f"Triton at {self.url}: {e}") from e
        return status

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        try:
            status, data = _http.request(method, self.url + path, body=body, timeout=self.timeout)
        except (_http.HTTPTimeoutError, _http.HTTPUnreachableError) as e:
            raise ServiceError(f"Triton at {self.url}: {e}") from e
        if status != 200:
            raise ServiceError(f"Triton at {self.url}: {method} {path}: HTTP {status}: "
                               f"{_http.error_message(data)}")
        return json.loads(data) if data else None
