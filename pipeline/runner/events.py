"""Progress and events: rich on stderr for humans, quiet lines in --json mode."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)


class Task(Protocol):
    def advance(self, n: float = 1) -> None: ...
    def update(self, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None: ...


class Reporter(Protocol):
    def stage_started(self, stage: str, fingerprint: str, why: str) -> None: ...
    def stage_skipped(self, stage: str, reason: str) -> None: ...
    def stage_done(self, stage: str, seconds: float, note: str = "") -> None: ...
    def stage_failed(self, stage: str, message: str) -> None: ...
    def info(self, message: str) -> None: ...
    def task(self, description: str, total: float | None = None, *, bytes_: bool = False) -> Any: ...


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        pass

    def __enter__(self) -> _NullTask:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Progress, description: str, total: float | None) -> None:
        self._p = progress
        self._id = progress.add_task(description, total=total)

    def advance(self, n: float = 1) -> None:
        self._p.advance(self._id, n)

    def update(self, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        kw: dict[str, Any] = {}
        if completed is not None:
            kw["completed"] = completed
        if total is not None:
            kw["total"] = total
        if description is not None:
            kw["description"] = description
        self._p.update(self._id, **kw)

    def __enter__(self) -> _RichTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self._p.remove_task(self._id)
        if not self._p.tasks:
            self._p.stop()


class ConsoleReporter:
    """Human output on stderr. With `quiet_progress` (json mode, or not a terminal) no bars."""

    def __init__(self, *, json_mode: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.json_mode = json_mode
        self.bars = not json_mode and self.console.is_terminal
        self._progress: Progress | None = None
        self._last_line: dict[int, float] = {}

    def info(self, message: str) -> None:
        self.console.print(message)

    def stage_started(self, stage: str, fingerprint: str, why: str) -> None:
        self.console.print(f"[bold]▶ {stage}[/] [dim]{fingerprint[:12]}[/] {why}")

    def stage_skipped(self, stage: str, reason: str) -> None:
        self.console.print(f"[green]✓ {stage}[/] skipped: {reason}")

    def stage_done(self, stage: str, seconds: float, note: str = "") -> None:
        self.console.print(f"[green]✓ {stage}[/] done in {seconds:.1f}s{(' ' + note) if note else ''}")

    def stage_failed(self, stage: str, message: str) -> None:
        self.console.print(f"[red]✗ {stage}[/] failed: {message}")

    def task(self, description: str, total: float | None = None, *, bytes_: bool = False) -> Any:
        if not self.bars:
            return _LineTask(self, description, total)
        if self._progress is None or not self._progress.live.is_started:
            cols: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
            cols += [DownloadColumn(), TransferSpeedColumn()] if bytes_ else [MofNCompleteColumn()]
            cols.append(TimeElapsedColumn())
            self._progress = Progress(*cols, console=self.console, transient=True)
            self._progress.start()
        return _RichTask(self._progress, description, total)


class _LineTask(_NullTask):
    """Without a terminal (CI logs), print a progress line at most every 10 seconds."""

    def __init__(self, reporter: ConsoleReporter, description: str, total: float | None) -> None:
        self.r, self.description, self.total, self.done = reporter, description, total, 0.0
        self.last = time.monotonic()

    def advance(self, n: float = 1) -> None:
        self.done += n
        self._maybe_print()

    def update(self, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        if completed is not None:
            self.done = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self._maybe_print()

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - self.last >= 10:
            self.last = now
            of = f"/{self.total:g}" if self.total else ""
            self.r.console.print(f"  … {self.description}: {self.done:g}{of}")


class NullReporter:
    def info(self, message: str) -> None:
        pass

    def stage_started(self, stage: str, fingerprint: str, why: str) -> None:
        pass

    def stage_skipped(self, stage: str, reason: str) -> None:
        pass

    def stage_done(self, stage: str, seconds: float, note: str = "") -> None:
        pass

    def stage_failed(self, stage: str, message: str) -> None:
        pass

    def task(self, description: str, total: float | None = None, *, bytes_: bool = False) -> Any:
        return _NullTask()


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    t: dict[str, float] = {"start": time.monotonic()}
    yield t
    t["seconds"] = time.monotonic() - t["start"]


def is_tty() -> bool:
    return sys.stderr.isatty()
