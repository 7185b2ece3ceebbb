"""Which recipes changed between a git ref and HEAD, directly or through `extends`.

`git diff --name-status -M REF HEAD` gives the changed files (renames detected). A recipe is
planned when its own file, or any base in its `extends` chain (transitively), is among them.
Deleted recipes are reported, never planned: there is nothing left to build. The chains are
read from the checked-out tree (HEAD in CI), without the environment, so a base change still
maps to every child even where a child needs variables the planning job does not have.

    plan = plan_changes("origin/main")
    print(json.dumps(plan.matrix()))   # {"include": [{"recipe": ..., "gpu": ..., "runner": ...}]}
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import GitOpsError, RecipeError

RECIPE_SUFFIXES = (".yaml", ".yml")
GIT_TIMEOUT_S = 60


@dataclass(frozen=True)
class Change:
    """One line of `git diff --name-status`: A, M, D, T or R (with the old path), repo-relative."""

    status: str
    path: str
    old_path: str | None = None


@dataclass
class PlannedRecipe:
    recipe: str  # path as the CI job passes it to `trtbuild run` (relative to the repo root)
    name: str
    gpu: str
    tensor_parallel: int
    pipeline_parallel: int
    runner: str
    because: list[str]  # the changed files that put it in the plan

    def matrix_entry(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "name": self.name, "gpu": self.gpu, "runner": self.runner,
                "tp": self.tensor_parallel, "pp": self.pipeline_parallel}


@dataclass
class ChangePlan:
    ref: str
    base_commit: str
    head_commit: str
    changes: list[Change]
    planned: list[PlannedRecipe] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # recipes deleted (or moved out) in the range
    problems: list[str] = field(default_factory=list)  # changed recipes that do not load

    def matrix(self) -> dict[str, list[dict[str, Any]]]:
        """GitHub Actions `strategy.matrix` (an empty include means: nothing to build)."""
        return {"include": [p.matrix_entry() for p in self.planned]}

    def markdown(self) -> str:
        """A table for a pull request or a CI job summary ($GITHUB_STEP_SUMMARY)."""
        lines = [f"### Recipes changed since `{self.ref}` ({self.base_commit[:12]}..{self.head_commit[:12]})", ""]
        if self.planned:
            lines += ["| recipe | name | gpu | tp | runner | because |", "| --- | --- | --- | --- | --- | --- |"]
            lines += [f"| `{p.recipe}` | {p.name} | {p.gpu} | {p.tensor_parallel} | `{p.runner}` | "
                      f"{'<br>'.join(p.because)} |" for p in self.planned]
        else:
            lines.append("Nothing to build.")
        lines += [f"- removed: `{r}` (not built; its released versions stay in the registry)" for r in self.removed]
        lines += [f"- problem: `{line}`" for line in self.problems]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "base_commit": self.base_commit, "head_commit": self.head_commit,
                "changes": [asdict(c) for c in self.changes],
                "planned": [asdict(p) for p in self.planned],
                "removed": self.removed, "problems": self.problems, "matrix": self.matrix()}


def runner_label(gpu: str, world_size: int) -> str:
    """The self-hosted runner label a recipe needs: the GPU name, with `-xN` for N GPUs.

    A TP2 H100 recipe needs a runner labelled `h100-x2`; a one-GPU one `h100`; `cpu` runs anywhere
    a runner carries the `cpu` label.
    """
    return gpu if world_size == 1 else f"{gpu}-x{world_size}"


# --------------------------------------------------------------------------- git
def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise GitOpsError("git is not installed (plan --changed-since needs it on PATH)") from None
    except subprocess.TimeoutExpired:
        raise GitOpsError(f"git {' '.join(args)} gave no answer in {GIT_TIMEOUT_S}s") from None


def repo_root(cwd: Path) -> Path:
    res = _git(["rev-parse", "--show-toplevel"], cwd)
    if res.returncode != 0:
        raise GitOpsError(f"{cwd.resolve()} is not inside a git work tree; run plan --changed-since "
                          "from a clone of the recipe repository")
    return Path(res.stdout.strip())


def resolve_commit(ref: str, root: Path) -> str:
    if not ref or ref.startswith("-"):
        raise GitOpsError(f"--changed-since '{ref}' is not a git ref; give a branch, tag or commit")
    res = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], root)
    if res.returncode != 0:
        raise GitOpsError(f"--changed-since '{ref}': no such commit in {root}",
                          hint="fetch it first (git fetch origin <branch>; in GitHub Actions use "
                               "actions/checkout with fetch-depth: 0), or pass a commit sha")
    return res.stdout.strip()


def changed_files(base: str, root: Path, head: str = "HEAD") -> list[Change]:
    """`git diff --name-status -M -z base head`, parsed (-z: paths with spaces or quotes as-is)."""
    res = _git(["diff", "--name-status", "-M", "-z", base, head, "--"], root)
    if res.returncode != 0:
        raise GitOpsError(f"git diff {base} {head} failed: {res.stderr.strip().splitlines()[-1:]}")
    parts = res.stdout.split("\0")
    out: list[Change] = []
    i = 0
    while i < len(parts) and parts[i]:
        status = parts[i]
        if status[:1] in ("R", "C"):
            old, new = parts[i + 1], parts[i + 2]
            out.append(Change(status[0], new, old) if status[0] == "R" else Change("A", new))
            i += 3
        else:
            out.append(Change(status[0], parts[i + 1]))
            i += 2
    return out


# --------------------------------------------------------------------------- plan
def _is_recipe(rel: str, recipes_rel: str) -> bool:
    p = Path(rel)
    return p.parent.as_posix() == recipes_rel and p.suffix in RECIPE_SUFFIXES


def plan_changes(ref: str, *, recipes_dir: Path = Path("recipes"), cwd: Path | None = None) -> ChangePlan:
    """The recipes under `recipes_dir` (top level only: bases live in subdirectories) that the
    commits in REF..HEAD change, directly or through a base. Raises GitOpsError for a bad ref."""
    from pipeline.recipe.load import load_recipe, recipe_files

    here = (cwd or Path.cwd()).resolve()
    root = repo_root(here)
    base = resolve_commit(ref, root)
    head = resolve_commit("HEAD", root)
    changes = changed_files(base, root)
    rdir = (here / recipes_dir).resolve()
    try:
        recipes_rel = rdir.relative_to(root).as_posix()
    except ValueError:
        raise GitOpsError(f"recipes directory {rdir} is outside the git work tree {root}") from None

    changed_abs = {(root / c.path).resolve(): c for c in changes if c.status != "D"}
    plan = ChangePlan(ref=ref, base_commit=base, head_commit=head, changes=changes)
    for c in changes:
        if c.status == "D" and _is_recipe(c.path, recipes_rel):
            plan.removed.append(c.path)
        elif (c.status == "R" and c.old_path is not None and _is_recipe(c.old_path, recipes_rel)
              and not _is_recipe(c.path, recipes_rel)):
            plan.removed.append(c.old_path)  # moved out of the recipes directory

    for path in sorted(p for s in RECIPE_SUFFIXES for p in rdir.glob(f"*{s}")):
        rel = path.relative_to(root).as_posix()
        shown = os.path.relpath(path)  # how errors name it: relative to where the user stands
        try:
            chain = [f.resolve() for f in recipe_files(shown)]
        except RecipeError as e:
            plan.problems.extend(e.problems)  # e.g. its base was deleted in this range
            continue
        because = [changed_abs[f] for f in chain if f in changed_abs]
        if not because:
            continue
        try:
            loaded = load_recipe(shown)
        except RecipeError as e:
            plan.problems.extend(e.problems)
            continue
        t = loaded.recipe.target
        plan.planned.append(PlannedRecipe(
            recipe=rel, name=loaded.recipe.name, gpu=t.gpu, tensor_parallel=t.tensor_parallel,
            pipeline_parallel=t.pipeline_parallel, runner=runner_label(t.gpu, t.world_size),
            because=[_describe(c) for c in because]))
    return plan


def _describe(c: Change) -> str:
    kind = {"A": "added", "M": "modified", "R": "renamed", "T": "type changed"}.get(c.status, c.status)
    return f"{c.path} ({kind}{' from ' + c.old_path if c.old_path else ''})"
