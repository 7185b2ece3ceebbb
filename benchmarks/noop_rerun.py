"""Time a no-op re-run of a recipe against its full run, in the same session.

    python benchmarks/noop_rerun.py recipes/smollm2-cpu.yaml [--until STAGE] [--artifacts DIR] [--local]

Runs `trtbuild run` twice on a fresh artifacts directory (the second run must skip every stage)
and prints both wall times and their ratio. Goal: the no-op re-run takes at most 2% of the full run.
With --local both runs use `run --local` (the README's main command): local services are started
under the artifacts directory and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(recipe: str, artifacts: Path, until: str | None, local: bool) -> tuple[float, dict[str, object]]:
    argv = [sys.executable, "-m", "pipeline.cli.__main__", "run", recipe, "--json", "--artifacts", str(artifacts)]
    if until:
        argv += ["--until", until]
    if local:
        argv.append("--local")
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"trtbuild run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--until", help="stop after this stage (for pipelines not yet complete)")
    ap.add_argument("--artifacts", type=Path, help="artifacts directory (default: a fresh temporary one)")
    ap.add_argument("--local", action="store_true", help="run with --local (local S3, MLflow, Triton)")
    args = ap.parse_args()
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="trtbuild-bench-"))
    try:
        full, first = run(args.recipe, artifacts, args.until, args.local)
        noop, second = run(args.recipe, artifacts, args.until, args.local)
    finally:
        if args.local:
            subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", "local", "down", "--root",
                            str(artifacts / "local")], capture_output=True, check=False)
    statuses = {s["name"]: s["status"] for s in second["stages"]}  # type: ignore[index, union-attr]
    ran = [n for n, s in statuses.items() if s == "done"]
    print(f"recipe           {args.recipe} (until {args.until or 'publish'})")
    done = [s["name"] for s in first["stages"] if s["status"] == "done"]  # type: ignore[index, union-attr]
    print(f"full run         {full:8.2f} s   stages done: {done}")
    print(f"no-op re-run     {noop:8.2f} s   stages re-run: {ran or 'none'}")
    print(f"ratio            {noop / full:8.4f}   (goal <= 0.02)")


if __name__ == "__main__":
    main()
