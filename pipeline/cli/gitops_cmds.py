"""sync: reconcile a Triton model repository to a desired-state file (deploy/<env>.yaml)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli import common
from pipeline.cli.output import Output


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
# no envvar here: the file names its own variable (production and staging must not share one)
@click.option("--server-url", default=None,
              help="Triton HTTP URL to switch live (default: the file's server_url).")
@click.option("--cache", type=click.Path(path_type=Path), default=Path("artifacts/bundles"), show_default=True,
              help="Where bundles fetched from the store are kept (verified again before publishing).")
@click.option("--load-timeout", type=float, default=300.0, show_default=True, help="Seconds a model load may take.")
@click.option("--lease-timeout", type=float, default=None,
              help="Seconds to wait for another writer of the model (its lease) before failing with a line "
                   "that names it (default: the load timeout, 300).")
@common
def sync(file: Path, dry_run: bool, server_url: str | None, cache: Path, load_timeout: float,
         lease_timeout: float | None, json_mode: bool) -> None:
    """Make the model repository serve what FILE says; exit 1 on drift it cannot fix."""
    from pipeline.gitops.desired import load_desired
    from pipeline.gitops.sync import raise_for_drift
    from pipeline.gitops.sync import sync as do_sync

    out = Output(json_mode=json_mode)
    state = load_desired(file)
    res = do_sync(state, dry_run=dry_run, server_url=server_url, cache=cache, load_timeout=load_timeout,
                  lease_timeout=lease_timeout)
    via = f" via {res.server_url}" if res.server_url else ""
    head = f"sync {file} ({state.environment}) -> {res.repository}{via}"
    out.human(f"[bold]{head}[/]" + (" [dim](dry run)[/]" if dry_run else ""))
    for m in res.models:
        color = "red" if m.error else ("green" if m.action == "in-sync" else "yellow")
        out.human(f"  [{color}]{m.line()}[/]")
    if not res.changed and not res.failed:
        out.human("nothing to do: the repository already serves the desired state")
    out.result(res.to_json())
    raise_for_drift(res)


def register(group: click.Group) -> None:
    group.add_command(sync)
