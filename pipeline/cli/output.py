"""One output object: JSON on stdout for machines, human text and progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console


class Output:
    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def human(self, *objects: Any, **kwargs: Any) -> None:
        """Human text (stderr). Shown in --json mode too: stdout stays machine-only."""
        self.err.print(*objects, **kwargs)

    def result(self, data: Any) -> None:
        """The command's result: JSON on stdout in --json mode; nothing otherwise."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            sys.stdout.flush()
