"""Progress and events: rich on stderr for humans, quiet lines in --json mode."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
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
    def log_excerpt(self, log: Path, lines: list[str]) -> None: ...


# a line at least this often (seconds) while anything runs, in logs and with --json
HEARTBEAT_S = 15.0


def heartbeat_interval() -> float:
    """TRTBUILD_HEARTBEAT_S, or 15 s: the longest silence on the console while a stage runs."""
    return float(os.environ.get("TRTBUILD_HEARTBEAT_S") or HEARTBEAT_S)


def _seconds(s: float) -> str:
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


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
    """Human output on stderr (or the console given). Without a terminal, or with --json, no bars:
    progress comes as lines, and a heartbeat line says what is being waited on and for how long
    whenever nothing was printed for `heartbeat_s` while a stage or a task is open."""

    def __init__(self, *, json_mode: bool = False, console: Console | None = None,
                 heartbeat_s: float | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.json_mode = json_mode
        self.bars = not json_mode and self.console.is_terminal
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else heartbeat_interval()
        self._progress: Progress | None = None
        self._lock = threading.Lock()
        self._waits: list[_LineTask] = []  # open tasks, innermost last
        self._stage: tuple[str, float] | None = None
        self._last_print = time.monotonic()
        self._beat: threading.Thread | None = None

    def print(self, message: str) -> None:
        """Every line of trtbuild's own goes through here (so the heartbeat knows when it spoke last)."""
        self._last_print = time.monotonic()
        self.console.print(message)

    def info(self, message: str) -> None:
        self.print(message)

    def stage_started(self, stage: str, fingerprint: str, why: str) -> None:
        self.print(f"[bold]▶ {stage}[/] [dim]{fingerprint[:12]}[/] {escape(why)}")
        self._stage = (stage, time.monotonic())
        self._ensure_heartbeat()

    def stage_skipped(self, stage: str, reason: str) -> None:
        self.print(f"[green]✓ {stage}[/] skipped: {escape(reason)}")

    def stage_done(self, stage: str, seconds: float, note: str = "") -> None:
        self._stage = None
        self.print(f"[green]✓ {stage}[/] done in {seconds:.1f}s{(' ' + note) if note else ''}")

    def stage_failed(self, stage: str, message: str) -> None:
        self._stage = None
        self.print(f"[red]✗ {stage}[/] failed: {escape(message)}")

    def log_excerpt(self, log: Path, lines: list[str]) -> None:
        """A failed stage's last log lines and where the whole log is."""
        if lines:
            self.print(f"  [dim]last {len(lines)} lines of {escape(str(log))}:[/]")
            for line in lines:
                self.print(f"  [dim]│[/] {escape(line)}")
        self.print(f"  log: {escape(str(log))}{'' if lines else ' (empty)'}")

    def task(self, description: str, total: float | None = None, *, bytes_: bool = False) -> Any:
        if not self.bars:
            return _LineTask(self, description, total)
        if self._progress is None or not self._progress.live.is_started:
            cols: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
            cols += [DownloadColumn(), TransferSpeedColumn()] if bytes_ else [MofNCompleteColumn()]
            cols.append(TimeElapsedColumn())
            # no redirection of sys.stdout/sys.stderr into the bars: third-party prints go to the stage log
            self._progress = Progress(*cols, console=self.console, transient=True,
                                      redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
        return _RichTask(self._progress, description, total)

    # ------------------------------------------------------------------ heartbeat
    def _open(self, task: _LineTask) -> None:
        with self._lock:
            self._waits.append(task)
        self._ensure_heartbeat()

    def _close(self, task: _LineTask) -> None:
        with self._lock:
            if task in self._waits:
                self._waits.remove(task)

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._beat is None or not self._beat.is_alive():
                self._beat = threading.Thread(target=self._heartbeat, name="trtbuild-heartbeat", daemon=True)
                self._beat.start()

    def _heartbeat(self) -> None:
        tick = max(0.01, min(1.0, self.heartbeat_s / 5))
        while True:
            time.sleep(tick)
            with self._lock:
                waits, stage = list(self._waits), self._stage
                if not waits and stage is None:
                    self._beat = None
                    return
            if time.monotonic() - self._last_print < self.heartbeat_s:
                continue
            if self._progress is not None and self._progress.live.is_started:
                continue  # the bars show the spinner and the elapsed time
            try:
                self.print(self._beat_line(waits, stage))
            except (ValueError, OSError):  # the console was closed under us (the command is ending)
                return

    def _beat_line(self, waits: list[_LineTask], stage: tuple[str, float] | None) -> str:
        now = time.monotonic()
        where = f"{stage[0]}: " if stage else ""
        if waits:
            w = waits[-1]
            of = f"/{w.total:g}" if w.total else ""
            done = f" {w.done:g}{of}," if w.done or w.total else ""
            total = f" (stage {_seconds(now - stage[1])})" if stage else ""
            return f"  … {where}{escape(w.description)}:{done} {_seconds(now - w.started)}{total}"
        assert stage is not None  # noqa: S101 - the heartbeat runs only while one of them is open
        return f"  … {stage[0]} running, {_seconds(now - stage[1])}"


class _LineTask(_NullTask):
    """Without a terminal (CI logs): the reporter's heartbeat prints this task's state while it is open."""

    def __init__(self, reporter: ConsoleReporter, description: str, total: float | None) -> None:
        self.r, self.description, self.total, self.done = reporter, description, total, 0.0
        self.started = time.monotonic()

    def advance(self, n: float = 1) -> None:
        self.done += n

    def update(self, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        if completed is not None:
            self.done = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description

    def __enter__(self) -> _LineTask:
        self.started = time.monotonic()
        self.r._open(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.r._close(self)


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

    def log_excerpt(self, log: Path, lines: list[str]) -> None:
        pass


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    t: dict[str, float] = {"start": time.monotonic()}
    yield t
    t["seconds"] = time.monotonic() - t["start"]


def is_tty() -> bool:
    return sys.stderr.isatty()
