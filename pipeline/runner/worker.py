"""Entry point of the stage executor in the other environment.

`python -m pipeline.runner.worker SPEC.json` reads {"function": "module:func", "args": {...},
"result": path}, calls the function and writes {"ok": true, "result": ...} or
{"ok": false, "error": ...} to the result path (temporary name, then rename). It imports only
the standard library before the function's own module, so it runs in a TensorRT-LLM container.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def call(function: str, args: dict[str, Any]) -> Any:
    module, _, name = function.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return fn(**args)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result_path = Path(spec["result"])
    try:
        out: dict[str, Any] = {"ok": True, "result": call(spec["function"], spec["args"])}
        code = 0
    except Exception as e:  # the error crosses the process boundary as data
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        code = 1
    tmp = result_path.with_name(f".tmp-{result_path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(out))
    tmp.replace(result_path)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
