"""`local up/status/down`: real SeaweedFS and `mlflow server`, detached, idempotent, clash-proof."""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import StoreError
from pipeline.local import local_down, local_status, local_up, process
from pipeline.local.seaweed import GRPC_OFFSET, pick_ports, port_free
from pipeline.registry import MlflowRegistry
from pipeline.store import open_store
from tests.integration.services_fixtures import make_bundle

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("local")
    env = local_up(root)
    try:
        yield root, env
    finally:
        local_down(root)


def _use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_up_writes_env_state_and_private_files(stack: tuple[Path, dict[str, str]]) -> None:
    root, env = stack
    assert env["TRTBUILD_STORE"] == "s3://trtbuild-bundles"
    assert env["AWS_ENDPOINT_URL_S3"].startswith("http://127.0.0.1:")
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    for name in ("credentials.env", "local.env"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    text = (root / "local.env").read_text()
    for k, v in env.items():
        assert f"export {k}={v}\n" in text
    state = json.loads((root / "state.json").read_text())
    for name in ("seaweed", "mlflow"):
        pid = state[name]["proc"]["pid"]
        assert process.is_ours(process.ProcInfo.from_dict(state[name]["proc"]))
        assert os.getsid(pid) == pid  # its own session: it outlives the CLI that started it
        assert env["AWS_SECRET_ACCESS_KEY"] not in " ".join(state[name]["proc"]["argv"])
    assert (root / "logs" / "seaweed.log").stat().st_size > 0
    assert (root / "logs" / "mlflow.log").stat().st_size > 0
    # Every weed port, HTTP and gRPC, explicit and on loopback.
    argv = state["seaweed"]["proc"]["argv"]
    for flag in ("master", "volume", "filer", "s3", "admin"):
        port = state["seaweed"]["ports"][flag]
        assert f"-{flag}.port={port}" in argv and f"-{flag}.port.grpc={port + GRPC_OFFSET}" in argv
    assert "-ip.bind=127.0.0.1" in argv and "-master.telemetry=false" in argv


def test_store_and_registry_work_from_the_env(
    stack: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = stack
    _use_env(monkeypatch, env, tmp_path)
    bid = make_bundle(tmp_path / "b", {"a.bin": os.urandom(1000), "b/c.txt": b"hello"})
    store = open_store(os.environ["TRTBUILD_STORE"])
    stored = store.put(tmp_path / "b")
    store.get(bid, tmp_path / "out")
    reg = MlflowRegistry(os.environ["MLFLOW_TRACKING_URI"])
    with reg.start_run("local", "tiny") as run:
        run.log_artifact(tmp_path / "b" / "b" / "c.txt")
    v = reg.register_bundle(
        "local-tiny", stored.uri, bid, tags={"gate.accuracy": "pass"}, run_id=run.run_id
    )
    assert reg.list_versions("local-tiny")[0]["source"] == stored.uri and v >= 1
    # Credentials are enforced.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreError, match="refused the credentials"):
        open_store(os.environ["TRTBUILD_STORE"]).list()


def test_up_twice_keeps_the_servers(stack: tuple[Path, dict[str, str]]) -> None:
    root, env = stack
    before = json.loads((root / "state.json").read_text())
    t0 = time.monotonic()
    again = local_up(root)
    assert time.monotonic() - t0 < 10
    assert again == env
    after = json.loads((root / "state.json").read_text())
    assert after["seaweed"]["proc"] == before["seaweed"]["proc"]
    assert after["mlflow"]["proc"] == before["mlflow"]["proc"]


def test_status(stack: tuple[Path, dict[str, str]]) -> None:
    root, env = stack
    st = local_status(root)
    assert st["up"] is True
    assert st["seaweed"]["running"] and st["seaweed"]["healthy"]
    assert st["seaweed"]["endpoint"] == env["AWS_ENDPOINT_URL_S3"]
    assert st["mlflow"]["running"] and st["mlflow"]["healthy"]
    assert st["mlflow"]["url"] == env["MLFLOW_TRACKING_URI"]
    json.dumps(st)  # the CLI prints it with --json


def test_pick_ports_avoids_a_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        ports = pick_ports(preferred_s3=busy)
    assert ports.s3 != busy
    assert len(set(ports.all())) == 10
    assert all(port_free(p) for p in ports.all())


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Answers 200 to everything, like a healthy server that is not ours."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_port_clash_detached_up_then_down(tmp_path: Path) -> None:
    root = tmp_path / "clash"
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    busy = impostor.server_address[1]
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        # `up` from another process (as the CLI does): the servers must outlive it.
        code = (
            "import json, sys; from pathlib import Path; from pipeline.local import local_up; "
            "print(json.dumps(local_up(Path(sys.argv[1]), mlflow_port=int(sys.argv[2]))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(root), str(busy)],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        env = json.loads(out.stdout.strip().splitlines()[-1])
        assert not env["MLFLOW_TRACKING_URI"].endswith(f":{busy}")
        log = (root / "logs" / "mlflow.log").read_text()
        assert "Errno 98" in log  # mlflow tried the busy port, exited 0, and was not believed
        st = local_status(root)
        assert st["up"] is True
        state = json.loads((root / "state.json").read_text())
        pids = [state[n]["proc"]["pid"] for n in ("seaweed", "mlflow")]
    finally:
        impostor.shutdown()
        impostor.server_close()

    # A recorded pid that is not the process we started is left alone.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        fake = dict(state)
        fake["mlflow"] = {
            **state["mlflow"],
            "proc": {"pid": sleeper.pid, "start_time": 1, "argv": ["sleep", "60"]},
        }
        (root / "state.json").write_text(json.dumps(fake))
        result = local_down(root)
        assert result == {"triton": "not started", "mlflow": "not running", "seaweed": "stopped"}
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    # The fake record hid the real mlflow server from `down`: stop it through its own record.
    assert process.stop(process.ProcInfo.from_dict(state["mlflow"]["proc"]))
    for pid in pids:
        assert not process.alive(pid)
    st = local_status(root)
    assert not st["seaweed"]["running"] and not st["mlflow"]["running"] and st["up"] is False
    assert local_down(root) == {"triton": "not started", "mlflow": "not started", "seaweed": "not started"}


def test_down_then_up_keeps_credentials_and_data(
    stack: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, env = stack
    _use_env(monkeypatch, env, tmp_path)
    bid = make_bundle(tmp_path / "b", {"persist.bin": os.urandom(5000)})
    open_store(env["TRTBUILD_STORE"]).put(tmp_path / "b")
    assert local_down(root) == {"triton": "not started", "mlflow": "stopped", "seaweed": "stopped"}
    assert local_status(root)["up"] is False
    env2 = local_up(root)
    assert env2["AWS_ACCESS_KEY_ID"] == env["AWS_ACCESS_KEY_ID"]
    assert env2["AWS_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
    assert env2["AWS_ENDPOINT_URL_S3"] == env["AWS_ENDPOINT_URL_S3"]  # same ports when still free
    _use_env(monkeypatch, env2, tmp_path)
    assert open_store(env2["TRTBUILD_STORE"]).exists(bid)


def test_up_with_a_repository_serves_it_and_down_stops_triton(tmp_path: Path) -> None:
    """The third local service: a detached tritonserver on the model repository, in the env."""
    from pipeline.triton.control import ModelControl
    from pipeline.triton.server import SHM_DIR, SHM_PREFIX, _all_mapped_shm

    root, repo = tmp_path / "local", tmp_path / "repo"
    shm_before = {p.name for p in SHM_DIR.glob(SHM_PREFIX + "*")}
    try:
        env = local_up(root, repository=repo)
        assert env["TRTBUILD_TRITON_REPO"] == str(repo.resolve())
        assert ModelControl(env["TRTBUILD_TRITON_URL"]).live()
        st = local_status(root)
        assert st["triton"]["healthy"] and st["triton"]["repository"] == str(repo.resolve())
        pid = st["triton"]["pid"]
        assert local_up(root, repository=repo) == env  # idempotent: same server, same env
        # without a repository the server goes: the env must not send publish to it
        env2 = local_up(root)
        assert "TRTBUILD_TRITON_URL" not in env2 and not process.alive(pid)
        env3 = local_up(root, repository=repo)
        pid3 = local_status(root)["triton"]["pid"]
    finally:
        result = local_down(root)
    assert result["triton"] == "stopped" and not process.alive(pid3)
    assert env3["TRTBUILD_TRITON_URL"] == env["TRTBUILD_TRITON_URL"]  # the same port when free
    # regions of other servers on this machine are still mapped; ours must be gone
    mapped, _ = _all_mapped_shm()
    assert {p.name for p in SHM_DIR.glob(SHM_PREFIX + "*")} - shm_before - mapped == set()
