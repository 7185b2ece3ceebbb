"""The local tritonserver that `trtbuild local up` keeps running on the model repository.

Unlike TritonServer (a child that dies with its owner), this one is detached like SeaweedFS and
MLflow, so a published model stays served between commands. Explicit model control: at start
it loads every model the repository holds, then publish and rollback switch versions through
the control API with the URL written into local.env.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.errors import ServiceError
from pipeline.local import process
from pipeline.repository.parallel import serving_env
from pipeline.triton import _http
from pipeline.triton.server import locate_tritonserver, remove_shm, server_argv
from pipeline.util.net import free_port

HOST = "127.0.0.1"


def models_in(repository: Path) -> list[str]:
    """Model directories Triton would load (a config.pbtxt each); temp dirs are not models."""
    if not repository.is_dir():
        return []
    return sorted(p.name for p in repository.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "config.pbtxt").is_file())


def live(port: int, timeout: float = 2.0) -> bool:
    try:
        status, _ = _http.request("GET", f"http://{HOST}:{port}/v2/health/live", timeout=timeout)
    except OSError:
        return False
    return status == 200


def start_triton(root: Path, repository: Path, *, preferred_http: int | None = None,
                 timeout: float = 180.0, attempts: int = 3) -> dict[str, Any]:
    """Start a detached tritonserver on `repository`; retry with new ports on a clash.

    Returns the state record: {proc, http_port, grpc_port, url, grpc_url, repository, started_at}.
    The timeout covers loading the models already in the repository (the python stub imports
    torch), not only the server.
    """
    install = locate_tritonserver(None)
    repository.mkdir(parents=True, exist_ok=True)
    log = root / "logs" / "tritonserver.log"
    last = ""
    for attempt in range(attempts):
        hp = preferred_http if (attempt == 0 and preferred_http) else free_port(HOST)
        gp = free_port(HOST)
        while gp == hp:
            gp = free_port(HOST)
        argv = server_argv(install, repository, http_port=hp, grpc_port=gp, host=HOST,
                           mode="explicit", load=models_in(repository))
        offset = process.log_size(log)
        started = time.time()
        # orchestrator mode when the repository holds a multi-GPU engine (pipeline/repository/parallel.py)
        env = {**install.environment(), **serving_env(repository)}
        proc, info = process.spawn_detached(argv, env=env, log_path=log, cwd=root)
        try:
            process.wait_ready(proc, hp, live, timeout=timeout, what="tritonserver", interval=0.1)
        except TimeoutError as e:
            out = process.read_from(log, offset)
            process.stop(info, grace=5)
            remove_shm(started)
            last = process.tail(out, 15)
            if "already in use" in out or "Address in use" in out:
                continue
            raise ServiceError(f"tritonserver did not start ({e}); log {log}:\n{last}") from None
        return {"proc": info.to_dict(), "http_port": hp, "grpc_port": gp,
                "url": f"http://{HOST}:{hp}", "grpc_url": f"{HOST}:{gp}",
                "repository": str(repository), "started_at": started}
    raise ServiceError(f"tritonserver did not start after {attempts} tries (ports in use); "
                       f"log {log}:\n{last}")


def stop_triton(record: dict[str, Any]) -> bool:
    """Stop it (SIGTERM, then SIGKILL of its session) and remove its shared-memory regions."""
    stopped = process.stop(process.ProcInfo.from_dict(record["proc"]), grace=15)
    if stopped:
        remove_shm(float(record.get("started_at", 0)))
    return stopped
