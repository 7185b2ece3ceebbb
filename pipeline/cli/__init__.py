"""`trtbuild`: thin click commands over the library. Errors become one line and an exit code."""

from __future__ import annotations

import functools
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pipeline import __version__
from pipeline.errors import EXIT_ERROR, EXIT_USAGE, RecipeError, TrtbuildError

F = TypeVar("F", bound=Callable[..., Any])


def common(fn: F) -> F:
    """--json and --debug on every command (they may also be given before the command)."""

    @click.option("--json", "json_mode", is_flag=True, help="Machine output (JSON) on stdout.")
    @click.option("--debug", is_flag=True, help="Show tracebacks.")
    @functools.wraps(fn)
    def wrapper(*args: Any, json_mode: bool, debug: bool, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        root = ctx.find_root().params
        return fn(*args, json_mode=json_mode or root.get("json_mode", False), **kwargs)

    return wrapper  # type: ignore[return-value]


def model_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback: an option or argument that names a model passes pipeline/names.py's rule."""
    from pipeline.names import check_name

    if value is None:
        return value
    what = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
    return check_name(value, f"{ctx.command_path} {what}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="trtbuild")
@click.option("--json", "json_mode", is_flag=True, help="Machine output (JSON) on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-v", "--verbose", is_flag=True,
              help="run: stream libraries' and child processes' output instead of logging it per stage.")
def cli(json_mode: bool, debug: bool, verbose: bool) -> None:
    """Turn a Hugging Face checkpoint into a gated, versioned LLM release served by Triton.

    Exit codes: 0 ok, 1 error, 2 usage, 3 a gate failed.
    """


def _register() -> None:
    from pipeline.cli import (
        bench_cmds,
        bundle_cmds,
        gitops_cmds,
        recipe_cmds,
        release_cmds,
        report_cmds,
        serve_cmds,
    )

    recipe_cmds.register(cli)
    bundle_cmds.register(cli)
    serve_cmds.register(cli)
    release_cmds.register(cli)
    gitops_cmds.register(cli)
    bench_cmds.register(cli)
    report_cmds.register(cli)


_register()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cancelled CI job, `kill`): unwound like Ctrl-C, so that what trtbuild started is stopped."""


def _on_sigterm(signum: int, frame: object) -> None:
    # Python's default for SIGTERM is to die on the spot: servers and containers in their own
    # sessions would outlive us. Raised once; a second SIGTERM must not cut the cleanup short.
    signal.signal(signal.SIGTERM, lambda *_: None)
    raise Terminated("SIGTERM")


def main(argv: list[str] | None = None) -> None:
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's
        _main(argv)
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="trtbuild", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:  # click turns KeyboardInterrupt (and so Terminated) into Abort
        if isinstance(e.__cause__, Terminated):
            click.echo("trtbuild: terminated", err=True)
            sys.exit(143)
        click.echo("trtbuild: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except RecipeError as e:
        if debug:
            traceback.print_exc()
        for line in e.problems:
            click.echo(line, err=True)
        sys.exit(e.exit_code)
    except TrtbuildError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"trtbuild: error: {e.one_line()}", err=True)
        sys.exit(e.exit_code)
    except Terminated:
        click.echo("trtbuild: terminated", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("trtbuild: interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if debug:
            traceback.print_exc()
        else:
            click.echo(f"trtbuild: internal error: {type(e).__name__}: {e} (run with --debug for "
                       "the traceback)", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(0)
