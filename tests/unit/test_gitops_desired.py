"""Desired-state files: the shipped examples validate; each mistake is one FILE:LINE line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import RecipeError
from pipeline.gitops.desired import load_desired
from tests.conftest import ROOT

DIGEST = "ab" * 32


@pytest.mark.parametrize("name", ["production.yaml", "staging.yaml"])
def test_shipped_examples_validate(name: str) -> None:
    state = load_desired(ROOT / "deploy" / name)
    assert state.models and state.environment == name.removesuffix(".yaml")


def problems(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "prod.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_desired(p)
    return e.value.problems


HEAD = "environment: production\nregistry: sqlite:///x.db\nrepository: repo\nmodels:\n  m:\n"


def test_unknown_key_names_file_line_and_known_fields(tmp_path: Path) -> None:
    [line] = problems(tmp_path, HEAD + "    registered_model: r\n    version: 2\n    verison: 3\n")
    assert line.startswith(f"{tmp_path / 'prod.yaml'}:8: models.m.verison: unknown field; known fields here:")


def test_exactly_one_selector(tmp_path: Path) -> None:
    [line] = problems(tmp_path, HEAD + "    registered_model: r\n    version: 2\n    alias: production\n")
    assert ":5: models.m: give exactly one of version, alias or digest (version, alias given)" in line
    [line] = problems(tmp_path, HEAD + "    registered_model: r\n")
    assert "(none given)" in line


def test_bad_digest_and_version(tmp_path: Path) -> None:
    lines = problems(tmp_path, HEAD + "    digest: sha256:1234\n")
    assert any(":6: models.m.digest: " in ln and "sha256:<64 lowercase hex>" in ln for ln in lines)
    lines = problems(tmp_path, HEAD + "    registered_model: r\n    version: 0\n")
    assert any(":7: models.m.version: Input should be greater than 0" in ln for ln in lines)


def test_version_needs_registry_and_registered_model(tmp_path: Path) -> None:
    [line] = problems(tmp_path, HEAD.replace("registry: sqlite:///x.db\n", "") + "    registered_model: r\n"
                      "    version: 1\n")
    assert "set registry" in line
    [line] = problems(tmp_path, HEAD + "    version: 1\n")
    assert "version needs registered_model" in line


def test_digest_with_store_needs_no_registry(tmp_path: Path) -> None:
    p = tmp_path / "prod.yaml"
    p.write_text("environment: production\nstore: file://s\nrepository: repo\nmodels:\n  m:\n"
                 f"    digest: sha256:{DIGEST}\n")
    assert load_desired(p).models["m"].digest == DIGEST


def test_unset_variable_and_empty_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_REPO_VAR", raising=False)
    lines = problems(tmp_path, HEAD.replace("repository: repo", "repository: ${NO_SUCH_REPO_VAR}")
                     + "    registered_model: r\n    version: 1\n")
    assert lines == [f"{tmp_path / 'prod.yaml'}:3: repository: environment variable NO_SUCH_REPO_VAR is not set; "
                     "export it or write ${NO_SUCH_REPO_VAR:-default}"]
    assert problems(tmp_path, "\n") == [f"{tmp_path / 'prod.yaml'}:1: empty desired-state file; see "
                                        "deploy/production.yaml for an example"]
