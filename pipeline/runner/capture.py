"""Keep third-party output off the terminal: each stage's fds 1 and 2 go to its own log file.

ModelOpt prints with print(), transformers and MLflow log, the GGUF conversion draws a tqdm bar on
stderr, and servers and lm-eval are child processes that inherit our fds. Redirecting the file
descriptors (os.dup2), not just `sys.stdout`, catches all of them; trtbuild's own console writes to
`terminal`, a duplicate of the original stderr taken before any redirection.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class OutputCapture:
    """Owns a duplicate of the process's stderr (`terminal`) and redirects fds 1 and 2 on request.

    `verbose=True` redirects nothing: everything streams to the terminal as it comes, and `into`
    yields None. Close it when the command is over.
    """

    def __init__(self, *, verbose: bool = False) -> None:
        self.verbose = verbose
        _flush()
        self.terminal: TextIO = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0),
                                                 encoding="utf-8", errors="replace", line_buffering=True,
                                                 write_through=True)

    @contextlib.contextmanager
    def into(self, log: Path) -> Iterator[Path | None]:
        """While the block runs, fds 1 and 2 (and so sys.stdout/sys.stderr and children) append to `log`.

        Verbose: nothing is logged; fd 1 goes to stderr so that stdout keeps the --json output only.
        """
        if self.verbose:
            with _fds_to(2), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning)
                warnings.filterwarnings("ignore", category=FutureWarning)
                yield None
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            with _fds_to(fd), _python_streams():
                yield log
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.terminal.close()


@contextlib.contextmanager
def _fds_to(fd: int) -> Iterator[None]:
    """fds 1 and 2 point where `fd` does while the block runs (fd 2 itself: only fd 1 moves)."""
    _flush()
    saved = os.dup(1), os.dup(2)
    try:
        for target in (1, 2):
            if target != fd:
                os.dup2(fd, target)
        yield
    finally:
        _flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in saved:
            os.close(f)


def _on_fd(stream: object, fd: int) -> bool:
    try:
        return stream.fileno() == fd  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def _python_streams() -> Iterator[None]:
    """Python-level prints follow fd 2 even where a caller (pytest, an embedding program) replaced
    sys.stdout/sys.stderr with objects that are not fds 1 and 2.

    The stream handed out is never closed: a logging handler made during a stage keeps it, and
    writes through it to whatever fd 2 is later (the terminal, the next stage's log).
    """
    out: TextIO = sys.stderr if _on_fd(sys.stderr, 2) else _fd2_stream()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield
    out.flush()


@functools.cache
def _fd2_stream() -> TextIO:
    return open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def tail(log: Path, n: int = 15) -> list[str]:
    """The last `n` non-empty lines of a log, a tqdm bar's carriage returns read as line ends."""
    try:
        data = log.read_bytes()[-256 * 1024:]
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return [line.rstrip() for line in text.splitlines() if line.strip()][-n:]
