"""`mlflow server` on loopback: sqlite backend, artifacts proxied to the local S3.

Pitfall handled here: on a port clash `mlflow server` logs "[Errno 98] ... address already in
use" and exits 0. Readiness therefore needs /health to answer AND the listening socket to belong
to the server's own session; an early exit with Errno 98 in the log is retried on another port.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import ServiceError
from pipeline.local import process
from pipeline.util.net import free_port

HOST = "127.0.0.1"
_CLASH_MARKERS = ("errno 98", "address already in use")


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


def healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url(port)}/health", timeout=timeout) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


def mlflow_argv(root: Path, port: int, artifacts_destination: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def server_env(s3_endpoint: str, access_key: str, secret_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
            # The job runner (huey) is not needed and would start more processes.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
    )
    return env


def start_mlflow(
    root: Path,
    *,
    s3_endpoint: str,
    access_key: str,
    secret_key: str,
    artifacts_destination: str = "s3://trtbuild-mlflow/",
    preferred_port: int | None = None,
    timeout: float = 120.0,
    attempts: int = 3,
) -> dict[str, Any]:
    """Start `mlflow server` (db root/mlflow.db, log root/logs/mlflow.log); retry on a port clash.

    Returns the state record: {proc: ProcInfo dict, port, url, s3_endpoint}.
    """
    log = root / "logs" / "mlflow.log"
    env = server_env(s3_endpoint, access_key, secret_key)
    last = ""
    for attempt in range(attempts):
        port = preferred_port if (attempt == 0 and preferred_port) else free_port(HOST)
        argv = mlflow_argv(root, port, artifacts_destination)
        offset = process.log_size(log)
        proc, info = process.spawn_detached(argv, env=env, log_path=log, cwd=root)
        try:
            process.wait_ready(
                proc, port, healthy, timeout=timeout, what="mlflow server", interval=0.25
            )
        except TimeoutError as e:
            out = process.read_from(log, offset)
            process.stop(info, grace=5)
            last = process.tail(out)
            if any(m in out.lower() for m in _CLASH_MARKERS):
                if attempt + 1 < attempts:
                    continue
                raise ServiceError(
                    f"mlflow server: port {port} is in use, {attempts} ports tried; log {log}"
                ) from None
            raise ServiceError(f"mlflow server did not start ({e}); log {log}:\n{last}") from None
        return {"proc": info.to_dict(), "port": port, "url": url(port), "s3_endpoint": s3_endpoint}
    raise ServiceError(f"mlflow server did not start after {attempts} tries; log {log}:\n{last}")
