"""Tuned vs default goodput of a recipe's tune stage, measured in one run.

    python -m benchmarks.tune_goodput [recipes/smollm2-cpu.yaml] [--artifacts DIR] [--report]

Runs `trtbuild run RECIPE --until build` (cached stages are reused), then the tune stage afresh
(`--from tune --until tune`), and prints the stage's own measurement: the default settings (the
build's, point 0 of the search) and the chosen ones, re-measured alternately after the search
(tune.search.confirm_trials) so the ratio is free of the search's selection bias, plus the tune
stage's time against its budget. Goal (issue 17): tuned/default >= 1.15 on the CPU recipe, and
the tune stage within its budget (under ~10 minutes on a 2-core machine).

Both sides are measured by the same client, on the same server process, in the same run, so a
machine that is slower or busier today moves both; the trials are printed so the spread is seen.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def trtbuild_run(recipe: str, artifacts: Path, *args: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pipeline.cli.__main__", "run", recipe, "--json", "--artifacts", str(artifacts),
            *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"trtbuild run {' '.join(args)} failed ({proc.returncode}): "
                 f"{proc.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(proc.stdout))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", default="recipes/smollm2-cpu.yaml")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"),
                    help="artifacts directory (default: ./artifacts, so a previous run's build is reused)")
    ap.add_argument("--report", action="store_true", help="also print the tune stage's Markdown report")
    args = ap.parse_args()
    trtbuild_run(args.recipe, args.artifacts, "--until", "build")
    summary = trtbuild_run(args.recipe, args.artifacts, "--from", "tune", "--until", "tune")
    tune = next(s for s in summary["stages"] if s["name"] == "tune")
    if tune["status"] != "done":
        sys.exit(f"the tune stage did not run ({tune['status']}: {tune.get('reason')}); enable tune in the recipe")
    report = json.loads(Path(tune["outputs"]["report"]).read_text())
    search = report["search"]
    default = next(p for p in search["points"] if p["index"] == report["default_point"])
    best = search["best"]
    print(f"recipe              {args.recipe}")
    print(f"objective           {report['objective']}")
    print(f"tune stage          {report['seconds']:.0f} s of a {report['budget_s']} s budget, {search['trials']} "
          f"trials{' (stopped by the budget)' if search['stopped_by_budget'] else ''}")
    print(f"default settings    {default['settings']}: search trials {_g(default['goodput_trials'])}")
    print(f"tuned settings      {best['settings']}: search trials {_g(best['goodput_trials'])}"
          + ("  (tie within noise with the runner-up)" if search["tie"] else ""))
    c = report.get("confirmed")
    if c:
        print(f"confirmation        default {_g(c['default_goodput'])}, tuned {_g(c['tuned_goodput'])} req/s")
    ratio = report["tuned_vs_default_goodput"]
    print(f"tuned/default       {ratio:.3f}   (goal >= 1.15)" if ratio else "tuned/default       n/a")
    if args.report:
        print()
        print(Path(tune["outputs"]["markdown"]).read_text())


def _g(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


if __name__ == "__main__":
    main()
