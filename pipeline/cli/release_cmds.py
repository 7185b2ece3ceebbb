"""local up|down|status, promote, list: the release side (SeaweedFS, MLflow)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli import common, model_name
from pipeline.cli.output import Output

ROOT = click.option("--root", type=click.Path(path_type=Path), default=Path("artifacts/local"), show_default=True,
                    help="Where local services keep their data, logs and env file.")
REGISTRY = click.option("--registry", envvar="MLFLOW_TRACKING_URI", default="sqlite:///artifacts/mlflow.db",
                        show_default=True, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI).")


@click.group()
def local() -> None:
    """Local SeaweedFS (S3) and MLflow server for the pipeline, on loopback."""


TRITON_REPO = click.option("--repository", type=click.Path(path_type=Path), default=Path("triton_repo"),
                           show_default=True, envvar="TRTBUILD_TRITON_REPO",
                           help="Model repository the local tritonserver serves and publish writes into.")
NO_TRITON = click.option("--no-triton", is_flag=True, help="Start S3 and MLflow only (no tritonserver).")


def start_local(root: Path, repository: Path | None, out: Output) -> dict[str, str]:
    """`local up` for the CLI: progress on stderr (the first start can take a minute)."""
    from pipeline.local.services import local_up
    from pipeline.runner.events import ConsoleReporter

    # a spinner in a terminal, a line every 15 s in a log
    reporter = ConsoleReporter(json_mode=out.json_mode, console=out.err)
    with reporter.task("starting local services (SeaweedFS, MLflow"
                       + (", tritonserver)" if repository is not None else ")")):
        env = local_up(root, repository=repository)
    parts = [f"S3 {env['AWS_ENDPOINT_URL_S3']}", f"MLflow {env['MLFLOW_TRACKING_URI']}"]
    if "TRTBUILD_TRITON_URL" in env:
        parts.append(f"Triton {env['TRTBUILD_TRITON_URL']} serving {env['TRTBUILD_TRITON_REPO']}")
    out.human("[green]local services up[/]: " + ", ".join(parts))
    return env


@local.command()
@ROOT
@TRITON_REPO
@NO_TRITON
@common
def up(root: Path, repository: Path, no_triton: bool, json_mode: bool) -> None:
    """Start (or keep) the services; print the environment other commands read."""
    out = Output(json_mode=json_mode)
    env = start_local(root, None if no_triton else repository, out)
    out.result({k: ("***" if "SECRET" in k else v) for k, v in env.items()})
    out.human(f"load the environment with: set -a; . {root / 'local.env'}; set +a")


@local.command()
@ROOT
@common
def down(root: Path, json_mode: bool) -> None:
    """Stop the services this root started (and nothing else)."""
    from pipeline.local.services import local_down

    out = Output(json_mode=json_mode)
    res = local_down(root)
    out.result(res)
    out.human(", ".join(f"{k}: {v}" for k, v in res.items()) or "nothing was running")


@local.command()
@ROOT
@common
def status(root: Path, json_mode: bool) -> None:
    """Which services run and answer."""
    from pipeline.local.services import local_status

    out = Output(json_mode=json_mode)
    st = local_status(root)
    out.result(st)
    for name in ("seaweed", "mlflow", "triton"):
        s = st.get(name) or {}
        out.human(f"{name}: {'running' if s.get('running') else 'stopped'}"
                  f"{', healthy' if s.get('healthy') else ''} {s.get('url') or s.get('endpoint') or ''}")


@click.command()
@click.argument("model", callback=model_name)
@click.option("--version", "version", type=int, help="Version to promote (default: the 'candidate' alias).")
@REGISTRY
@common
def promote(model: str, version: int | None, registry: str, json_mode: bool) -> None:
    """Point the 'production' alias at a version; the previous one is recorded for rollback."""
    from pipeline.registry.mlflow_registry import open_registry

    out = Output(json_mode=json_mode)
    previous, new = open_registry(registry).promote(model, version)
    out.result({"model": model, "previous": previous, "production": new})
    out.human(f"{model}: production {previous} -> {new}; undo with `trtbuild rollback {model} --registry`")


@click.command(name="list")
@click.argument("model", callback=model_name)
@REGISTRY
@common
def list_(model: str, registry: str, json_mode: bool) -> None:
    """Versions with aliases, digests, gate verdicts and where each is deployed."""
    from pipeline.registry.mlflow_registry import open_registry

    out = Output(json_mode=json_mode)
    rows = open_registry(registry).list_versions(model)
    out.result({"model": model, "versions": rows})
    for r in rows:
        out.human(f"v{r['version']:<4} {','.join(r.get('aliases') or []):22} {str(r.get('digest'))[:12]}  "
                  f"gates {r.get('gates')}  {r.get('source')}"
                  + (f"  deployed {r['deployed']}" if r.get("deployed") else ""))
        for name, prof in sorted(((r.get("profiles") or {}).get("profiles") or {}).items()):
            default = " (default)" if name == r["profiles"].get("default") else ""
            settings = ", ".join(f"{k}={v}" for k, v in prof.get("settings", {}).items())
            out.human(f"      profile {name}{default}: {settings}; goodput {prof.get('goodput')} req/s, "
                      f"TTFT p99 {prof.get('ttft_p99')} s")


def register(group: click.Group) -> None:
    group.add_command(local)
    group.add_command(promote)
    group.add_command(list_)
