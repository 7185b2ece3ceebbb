"""serve, publish, rollback: Triton model repositories and a local tritonserver."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from pipeline.cli import common, model_name
from pipeline.cli.output import Output

REPO = click.option("--repository", type=click.Path(path_type=Path), default=Path("triton_repo"), show_default=True,
                    envvar="TRTBUILD_TRITON_REPO", help="Triton model repository.")
# publish and rollback write through pipeline/repository (open_repository): a directory or s3://bucket/prefix
REPO_URI = click.option("--repository", default="triton_repo", show_default=True, envvar="TRTBUILD_TRITON_REPO",
                        help="Triton model repository: a directory or s3://bucket/prefix.")
SERVER = click.option("--server-url", envvar="TRTBUILD_TRITON_URL", default=None,
                      help="Triton HTTP URL to switch live (default: $TRTBUILD_TRITON_URL; none: files only).")
SERVER_REPO = click.option("--server-repository", default=None,
                           help="The repository's path as the server sees it (a container mount), used in "
                                "rendered engine/tokenizer/checkpoint paths (default: --repository, absolute).")


LEASE_TIMEOUT = click.option("--lease-timeout", type=float, default=None,
                             help="Seconds to wait for another writer of the model (its lease) before failing "
                                  "with a line that names it (default: the load timeout, 300).")

@click.command()
@REPO
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--tritonserver", "binary", type=click.Path(path_type=Path), help="tritonserver binary to use.")
@common
def serve(repository: Path, http_port: int, grpc_port: int, host: str, binary: Path | None, json_mode: bool) -> None:
    """Start tritonserver on a model repository (explicit model control) until interrupted."""
    from pipeline.repository.local import DirectoryRepository
    from pipeline.triton.server import TritonServer, locate_tritonserver

    out = Output(json_mode=json_mode)
    repo = DirectoryRepository(repository)
    models = repo.top_level_models()
    install = locate_tritonserver(binary)
    from pipeline.repository.parallel import serving_env

    env = serving_env(repository)  # orchestrator mode when an engine spans several GPUs
    if env:
        out.human(f"multi-GPU engines in {repository}: tritonserver runs in TensorRT-LLM orchestrator mode "
                  f"({', '.join(f'{k}={v}' for k, v in env.items())})")
    server = TritonServer(install, log_path=Path("artifacts/logs/tritonserver.log"), env=env)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server.start(repository.resolve(), http_port=http_port, grpc_port=grpc_port, host=host, load=models):
        info = {"http_url": server.http_url, "grpc_url": server.grpc_url, "pid": server.pid,
                "models": {m: repo.served_versions(m) for m in models}}
        out.result(info)
        out.human(f"[green]tritonserver ready[/] http {server.http_url} grpc {server.grpc_url}; models {models}")
        out.human("Ctrl-C stops it (SIGTERM, then SIGKILL of its process group, then shm cleanup)")
        try:
            while not stop.wait(1.0):
                server.ensure_running()
        except KeyboardInterrupt:
            pass
    out.human("tritonserver stopped")


SWITCH = click.option(
    "--switch", type=click.Choice(["side-by-side", "drain", "rolling"]), default="side-by-side", show_default=True,
    help="side-by-side: the new version loads beside the serving one (no downtime; two must fit on the GPUs); "
         "drain: unload the serving version first (downtime = load time); rolling: write the repository only "
         "(replicas restart into it). `trtbuild plan RECIPE --explain DIR` says which a model needs.")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--model", required=True, callback=model_name, help="Triton model name.")
@REPO_URI
@SERVER
@click.option("--keep", type=int, default=3, show_default=True, help="Version directories kept on disk.")
@click.option("--target", help="Runtime to check the bundle against (default: this host).")
@click.option("--store", envvar="TRTBUILD_STORE", default=None,
              help="Bundle store the bundle was released to, recorded so rollback can fetch pruned versions "
                   "(default: $TRTBUILD_STORE).")
@SERVER_REPO
@SWITCH
@LEASE_TIMEOUT
@click.option("--profile", help="Serving profile of the bundle (its tune stage's, e.g. throughput or latency; "
                                "`trtbuild list` shows them). Default: the bundle's default profile.")
@common
def publish(bundle: Path, model: str, repository: str, server_url: str | None, keep: int, target: str | None,
            store: str | None, server_repository: str | None, switch: str, lease_timeout: float | None,
            profile: str | None, json_mode: bool) -> None:
    """Publish a bundle as the next version of MODEL (zero downtime when a server is given)."""
    from pipeline.bundle import detect_runtime, facts_for_target
    from pipeline.repository.publish import publish_bundle
    from pipeline.repository.render import ServingOptions

    out = Output(json_mode=json_mode)
    facts = facts_for_target(target) if target else (detect_runtime() or facts_for_target("cpu"))
    res = publish_bundle(bundle, repository, model, facts=facts, keep=keep, server_url=server_url, store=store,
                         server_repository=server_repository, switch=switch, lease_timeout=lease_timeout,
                         options=ServingOptions(profile=profile))
    from pipeline.bundle import load_bundle
    from pipeline.tune.profiles import resolve

    served_profile, _ = resolve(load_bundle(bundle, verify=False), profile)
    out.result({**res.to_json(), "profile": served_profile})
    out.human(f"published {model} version {res.version} (bundle {res.bundle_id[:12]}"
              + (f", profile {served_profile}" if served_profile else "") + ")"
              + (" and switched the server" if res.switched else ""))


@click.command()
@click.argument("model", callback=model_name)
@click.option("--to", "to_version", type=int, help="Triton version to serve (default: the previous one).")
@REPO_URI
@SERVER
@click.option("--registry", "registry", default=None, is_flag=False, flag_value="env",
              help="Move MLflow's 'production' alias back one version and serve the bundle it now "
                   "points at (URI, or bare for $MLFLOW_TRACKING_URI).")
@click.option("--registered-model", callback=model_name, help="MLflow registered model (default: MODEL; a recipe's "
                                         "release.model_name when it differs from publish.model_name).")
@click.option("--triton/--no-triton", default=True, help="Change what Triton serves (default on).")
@SERVER_REPO
@SWITCH
@LEASE_TIMEOUT
@common
def rollback(model: str, to_version: int | None, repository: str, server_url: str | None, registry: str | None,
             registered_model: str | None, triton: bool, server_repository: str | None, switch: str,
             lease_timeout: float | None, json_mode: bool) -> None:
    """Serve the previous (or --to) version of MODEL again, through load, ready and smoke.

    A version pruned from the repository is fetched back from the store it was published
    from (every sha256 verified). With --registry the registry decides: `production` moves
    back to the version it replaced and MODEL serves that version's bundle (switched to if it
    is in the repository, otherwise fetched, verified and published).
    """
    import os

    from pipeline.errors import UsageError

    out = Output(json_mode=json_mode)
    result: dict[str, object] = {"model": model}
    if registry is None:
        if not triton:
            raise UsageError("rollback --no-triton needs --registry: there is nothing else to roll back")
        from pipeline.repository.publish import rollback as do_rollback

        res = do_rollback(repository, model, server_url=server_url, to=to_version,
                          server_repository=server_repository, switch=switch, lease_timeout=lease_timeout)
        result["triton"] = res.to_json()
        fetched = " (fetched from the store)" if res.fetched else ""
        out.human(f"{model}: serving version {res.version}{fetched} (was {res.previous})")
        out.result(result)
        return
    if to_version is not None:
        raise UsageError("--to picks a Triton version; with --registry the registry picks it "
                         "(use `trtbuild promote NAME --version V` to choose a registry version)")
    from pipeline.registry.mlflow_registry import open_registry

    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///artifacts/mlflow.db") if registry == "env" else registry
    name = registered_model or model
    was, now = open_registry(uri).rollback(name)
    result["registry"] = {"model": name, "from": was, "to": now}
    out.human(f"{name}: production alias v{was} -> v{now}")
    if triton:
        from pipeline.gitops.desired import DesiredState, ModelState
        from pipeline.gitops.sync import raise_for_drift, sync

        state = DesiredState(environment="rollback", registry=uri, repository=str(repository),
                             server_url=server_url or None,
                             models={model: ModelState(registered_model=name, alias="production")})
        synced = sync(state)
        result["triton"] = synced.to_json()
        for m in synced.models:
            out.human(m.line())
        raise_for_drift(synced)
    out.result(result)


def register(group: click.Group) -> None:
    for cmd in (serve, publish, rollback):
        group.add_command(cmd)
