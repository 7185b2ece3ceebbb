"""Before an ad hoc benchmark: is the URL up, is it the protocol asked for, which model, does a
streamed request come back with token counts. Each failure is one line saying what to change.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import requests

from pipeline.bench.client import Endpoint, OpenAIEndpoint, TritonEndpoint
from pipeline.bench.http import Session
from pipeline.errors import ServiceError, UsageError

OTHER = {"openai": "triton", "triton": "openai"}
LISTING = {"openai": "/v1/models", "triton": "/v2/repository/index"}
SERVER = {"openai": "an OpenAI-compatible server", "triton": "a Triton server"}


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url {url!r}: expected http://host:port")
    return url.rstrip("/")


def served_models(url: str, kind: str, *, timeout: float = 10.0) -> list[str]:
    """The models the server lists (OpenAI /v1/models, Triton's ready models in its index)."""
    path = LISTING[kind]
    try:
        if kind == "openai":
            r = requests.get(url + path, timeout=timeout)
        else:
            r = requests.post(url + path, json={"ready": True}, timeout=timeout)
    except requests.ConnectionError:
        raise ServiceError(f"{url}: cannot connect; is the server running, and is the port right?") from None
    except requests.Timeout:
        raise ServiceError(f"{url}{path}: no answer in {timeout:g}s") from None
    if r.status_code == 404:
        raise UsageError(f"{url}{path}: HTTP 404, no model listing (not {SERVER[kind]}?); "
                         f"try --kind {OTHER[kind]}, or give --model to skip the listing")
    if r.status_code != 200:
        raise ServiceError(f"{url}{path}: HTTP {r.status_code}: {r.text[:200]}")
    try:
        data = r.json()
        if kind == "openai":
            return sorted(str(m["id"]) for m in data.get("data", []))
        return sorted({str(m["name"]) for m in data if m.get("state", "READY") == "READY"})
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"{url}{path}: unexpected answer for --kind {kind}: {r.text[:120]!r}") from None


def pick_model(url: str, kind: str, model: str | None) -> str:
    """`model`, or the only model the server lists."""
    if model:
        return model
    models = served_models(url, kind)
    if len(models) != 1:
        listed = ", ".join(models) if models else "none"
        raise UsageError(f"{url} serves {len(models)} ready models ({listed}); choose one with --model")
    return models[0]


def endpoint(url: str, kind: str, model: str) -> Endpoint:
    if kind == "openai":
        return OpenAIEndpoint(url, model, name=model)
    if kind == "triton":
        return TritonEndpoint(url, model, name=model)
    raise UsageError(f"--kind {kind!r}: expected openai or triton")


def preflight(ep: Endpoint, url: str, kind: str, *, timeout: float = 120.0) -> None:
    """One short streamed request; raises with the reason when it does not come back whole."""

    async def one() -> str | None:
        async with Session(timeout=timeout) as session:
            rec = await ep.stream(session, "Hello", 2)
        return None if rec.ok else (rec.error or "no tokens counted")

    error = asyncio.run(one())
    if error is None:
        return
    if error.startswith("ConnectionError"):
        raise ServiceError(f"{url}: cannot connect; is the server running, and is the port right?")
    if error.startswith("HTTP 404"):
        raise UsageError(f"{url}: the first {kind} request got HTTP 404 (wrong --kind, or no model "
                         f"'{getattr(ep, 'model', '?')}' there; try --kind {OTHER[kind]} or --model): {error[10:160]}")
    raise ServiceError(f"{url}: the first request failed: {error}")
