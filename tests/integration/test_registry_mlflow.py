"""The MLflow registry over sqlite (embedded) and over a real `mlflow server` (REST)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import RegistryError
from pipeline.registry import MlflowRegistry, flatten_params, is_secret_key, redact_params
from pipeline.registry.mlflow_registry import REDACTED
from pipeline.util.net import free_port
from tests.integration.services_fixtures import *  # noqa: F403 - fixtures
from tests.integration.services_fixtures import S3Service

pytestmark = pytest.mark.integration

PLANTED = "SEKRET-" + os.urandom(8).hex()
RECIPE: dict[str, Any] = {
    "name": "tiny-fp8",
    "source": {"repo": "HuggingFaceTB/SmolLM2-135M", "revision": "abc123", "hf_token": PLANTED},
    "quantize": {"algo": "fp8", "kv_cache": "fp8", "calib": {"samples": 64}},
    "build": {"max_batch_size": 8, "max_tokens": 2048, "tokens_per_block": 64},
    "release": {
        "store": "s3://trtbuild-bundles/bundles",
        "aws_secret_access_key": PLANTED,
        "apiKey": PLANTED,
        "db_password": PLANTED,
        "credentials": {"user": "me", "pass": PLANTED},
        "endpoint": f"http://user:{PLANTED}@example.com/x",
    },
    "gates": [{"kind": "accuracy", "max_drop": 1.5}, {"kind": "throughput"}],
}


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised MLflow sqlite db: creating one runs every migration (several seconds)."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowRegistry(f"sqlite:///{db}").client.search_experiments()
    return db


@pytest.fixture
def sqlite_uri(template_db: Path, tmp_path: Path) -> str:
    db = tmp_path / "reg" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(template_db, db)
    return f"sqlite:///{db}"


@pytest.fixture(params=["sqlite", "http"])
def registry(request: pytest.FixtureRequest, sqlite_uri: str) -> MlflowRegistry:
    if request.param == "sqlite":
        return MlflowRegistry(sqlite_uri)
    url = request.getfixturevalue("mlflow_http")
    return MlflowRegistry(url)


def _db_path(registry: MlflowRegistry, request: pytest.FixtureRequest) -> Path:
    if registry.uri.startswith("sqlite:///"):
        return Path(registry.uri.removeprefix("sqlite:///"))
    from tests.integration.services_fixtures import _shared

    return Path(_shared["mlflow"][0]["root"]) / "mlflow.db"


def _model() -> str:
    return f"tiny-{uuid.uuid4().hex[:8]}"


def _bundle_id() -> str:
    return os.urandom(32).hex()


def test_run_params_are_flattened_and_secrets_never_stored(
    registry: MlflowRegistry, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    report = tmp_path / "accuracy.md"
    report.write_text("# accuracy\nok\n")
    with registry.start_run("trtbuild-test", "tiny-fp8", RECIPE) as run:
        run.log_metrics({"accuracy.top1": 0.89, "throughput.tok_s": 1234.5})
        run.log_artifact(report, "reports")
        assert run.list_artifacts("reports") == ["reports/accuracy.md"]
    params = registry.run_params(run.run_id)
    assert params["quantize.calib.samples"] == "64"
    assert params["build.max_tokens"] == "2048" and params["build.tokens_per_block"] == "64"
    assert params["gates.0.max_drop"] == "1.5" and params["gates.1.kind"] == "throughput"
    assert params["source.repo"] == "HuggingFaceTB/SmolLM2-135M"
    for key in (
        "source.hf_token",
        "release.aws_secret_access_key",
        "release.apiKey",
        "release.db_password",
        "release.credentials.pass",
        "release.credentials.user",
        "release.endpoint",
    ):
        assert params[key] == REDACTED, key
    assert not any(PLANTED in v for v in params.values())
    assert PLANTED.encode() not in _db_path(registry, request).read_bytes()


def test_register_promote_rollback(registry: MlflowRegistry) -> None:
    model = _model()
    ids = [_bundle_id() for _ in range(3)]
    with registry.start_run("trtbuild-test", "tiny-fp8") as run:
        pass
    versions = []
    for i, bid in enumerate(ids):
        v = registry.register_bundle(
            model,
            f"s3://trtbuild-bundles/bundles/bundles/{bid}",
            bid,
            tags={
                "recipe_digest": "r" * 8,
                "gate.accuracy": "pass",
                "gate.throughput": "pass" if i else "fail",
                "git_commit": "deadbeef",
            },
            run_id=run.run_id,
        )
        assert isinstance(v, int)
        versions.append(v)
    v1, v2, v3 = versions
    assert versions == [1, 2, 3]
    # The same digest again: the existing version, not a new one.
    assert registry.register_bundle(model, "s3://elsewhere", ids[1], tags={}) == v2

    with pytest.raises(RegistryError, match="no 'candidate' version"):
        registry.promote(model)
    registry.set_alias(model, "candidate", v1)
    assert registry.get_alias(model, "candidate") == v1
    assert registry.promote(model) == (None, v1)
    assert registry.get_alias(model, "production") == v1
    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback(model)

    registry.set_alias(model, "candidate", v2)
    assert registry.promote(model) == (v1, v2)
    registry.set_alias(model, "candidate", v3)
    assert registry.promote(model) == (v2, v3)
    assert registry.promote(model) == (v3, v3)  # already production: nothing moves
    assert registry.get_alias(model, "production") == v3

    assert registry.rollback(model) == (v3, v2)
    assert registry.get_alias(model, "production") == v2
    assert registry.rollback(model) == (v2, v1)
    assert registry.get_alias(model, "production") == v1
    assert registry.get_alias(model, "candidate") == v3

    assert registry.promote(model, v3) == (v1, v3)
    registry.set_version_tag(model, v3, "deployed", "2026-11-23T12:00:00+00:00")

    rows = registry.list_versions(model)
    assert [r["version"] for r in rows] == [3, 2, 1]
    top = rows[0]
    assert top["aliases"] == ["candidate", "production"]
    assert top["digest"] == ids[2]
    assert top["gates"] == {"accuracy": "pass", "throughput": "pass"}
    assert top["source"] == f"s3://trtbuild-bundles/bundles/bundles/{ids[2]}"
    assert top["deployed"] == "2026-11-23T12:00:00+00:00"
    assert top["created"] and top["promoted_at"] and top["run_id"] == run.run_id
    assert top["git_commit"] == "deadbeef" and top["recipe_digest"] == "r" * 8
    assert rows[2]["gates"]["throughput"] == "fail" and rows[2]["aliases"] == []


def test_reserved_aliases_are_rejected(registry: MlflowRegistry) -> None:
    model = _model()
    bid = _bundle_id()
    v = registry.register_bundle(model, f"s3://b/p/bundles/{bid}", bid, tags={})
    for alias in ("latest", "LATEST", "v1", "V12"):
        with pytest.raises(RegistryError, match=f"alias '{alias}' is reserved"):
            registry.set_alias(model, alias, v)
    with pytest.raises(RegistryError, match="may only contain"):
        registry.set_alias(model, "prod/uction", v)


def test_unknown_model_and_version(registry: MlflowRegistry) -> None:
    with pytest.raises(RegistryError, match="nope-model"):
        registry.get_alias("nope-model", "production")
    model = _model()
    bid = _bundle_id()
    registry.register_bundle(model, f"s3://b/p/bundles/{bid}", bid, tags={})
    with pytest.raises(RegistryError):
        registry.set_alias(model, "candidate", 42)
    with pytest.raises(RegistryError):
        registry.promote(model, 42)
    assert registry.get_alias(model, "production") is None


def test_file_source_is_refused_by_a_server(mlflow_http: str) -> None:
    reg = MlflowRegistry(mlflow_http)
    bid = _bundle_id()
    with pytest.raises(RegistryError, match="refuses a local model version source"):
        reg.register_bundle(_model(), f"file:///tmp/store/bundles/{bid}", bid, tags={})


def test_file_source_over_sqlite(sqlite_uri: str, tmp_path: Path) -> None:
    reg = MlflowRegistry(sqlite_uri)
    bid = _bundle_id()
    model = _model()
    v = reg.register_bundle(model, f"file://{tmp_path}/store/bundles/{bid}", bid, tags={})
    assert reg.list_versions(model)[0]["source"] == f"file://{tmp_path}/store/bundles/{bid}"
    assert v == 1


def test_server_down_is_one_clear_error() -> None:
    reg = MlflowRegistry(f"http://127.0.0.1:{free_port()}", health_timeout=1)
    with pytest.raises(RegistryError, match="not reachable") as exc:
        reg.list_versions("x")
    assert "trtbuild local up" in exc.value.one_line()


def test_sqlite_artifacts_stay_beside_the_db(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    reg = MlflowRegistry(sqlite_uri)
    f = tmp_path / "r.txt"
    f.write_text("x")
    with reg.start_run("e", "r") as run:
        run.log_artifact(f)
    assert not (tmp_path / "mlruns").exists()
    assert list((tmp_path / "reg" / "mlartifacts").rglob("r.txt"))


def test_failed_run_is_marked_failed(sqlite_uri: str) -> None:
    reg = MlflowRegistry(sqlite_uri)
    with pytest.raises(ValueError, match="boom"), reg.start_run("e", "r") as run:
        raise ValueError("boom")
    assert reg.client.get_run(run.run_id).info.status == "FAILED"


def test_run_does_not_print_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mlflow_http: str
) -> None:
    reg = MlflowRegistry(mlflow_http)
    with reg.start_run("e", "r"):
        pass
    assert capsys.readouterr().out == ""


def test_secret_key_rules() -> None:
    for k in (
        "hf_token",
        "HF_TOKEN",
        "aws_secret_access_key",
        "apiKey",
        "api_key",
        "password",
        "db.passwd",
        "credentials.user",
        "x.private_key",
        "auth.bearer",
    ):
        assert is_secret_key(k), k
    for k in (
        "max_tokens",
        "build.max_num_tokens",
        "tokens_per_block",
        "tokenizer",
        "kv_cache_quant_algo",
        "monkey",
        "keyword_len",
        "num_tokens",
    ):
        assert not is_secret_key(k), k
    flat = flatten_params({"a": {"b": [1, {"c": True}], "e": None, "f": {}}})
    assert flat == {"a.b.0": "1", "a.b.1.c": "true", "a.e": "null", "a.f": "{}"}
    assert redact_params({"x": "AKIAABCDEFGHIJKLMNOP", "y": "fine"}) == {"x": REDACTED, "y": "fine"}


def test_sqlite_db_has_no_planted_secret_in_any_table(sqlite_uri: str) -> None:
    db = Path(sqlite_uri.removeprefix("sqlite:///"))
    reg = MlflowRegistry(sqlite_uri)
    with reg.start_run("e", "r", RECIPE, tags={"note": "ok"}):
        pass
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        for t in tables:
            for row in con.execute(f"select * from {t}"):  # noqa: S608 - table names from sqlite_master
                assert PLANTED not in " ".join(str(c) for c in row), t
    finally:
        con.close()


def test_server_artifacts_land_in_s3(
    mlflow_http: str, seaweed_s3: S3Service, tmp_path: Path
) -> None:
    reg = MlflowRegistry(mlflow_http)
    f = tmp_path / "plot.txt"
    f.write_text("x")
    with reg.start_run("artifacts", "r") as run:
        run.log_artifact(f, "plots")
    listing = seaweed_s3.client().list_objects_v2(Bucket="trtbuild-mlflow")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert any(k.endswith(f"{run.run_id}/artifacts/plots/plot.txt") for k in keys), keys
