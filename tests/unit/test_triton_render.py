"""Triton repositories rendered from tensorrt and pytorch bundles, compared with TensorRT-LLM 1.2's
own layouts (tests/data/triton_backend_1.2/layout.json): model dirs, tensors, parameters, backends."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import upstream
from pipeline.bundle import facts_for_target, load_bundle
from pipeline.repository import history
from pipeline.repository import layout_ifb as ifb
from pipeline.repository.base import RepositoryError, parse_config
from pipeline.repository.local import DirectoryRepository, top_level_models
from pipeline.repository.pbtxt import ModelConfigError, config_to_dict
from pipeline.repository.publish import publish_bundle
from pipeline.repository.render import VERSION_CONFIG, RenderError, ServingOptions, composing_name
from pipeline.util.hashing import iter_content_files
from tests.conftest import ROOT
from tests.triton_bundles import pytorch_bundle, recipe, tensorrt_bundle

UPSTREAM = json.loads((ROOT / "tests/data/triton_backend_1.2/layout.json").read_text())
IFB = UPSTREAM["inflight_batcher_llm"]
LLMAPI = UPSTREAM["llmapi"]["tensorrt_llm"]
ROLES = ("preprocessing", "tensorrt_llm", "postprocessing")
# parameters trtbuild adds on top of upstream's, per role
OWN_PARAMETERS = {"ensemble": {"bundle_id", "recipe"}, "llmapi": {"bundle_id", "recipe"}}


@pytest.fixture(scope="module")
def trt_bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("trt")
    r = recipe("llama70b")
    return [tensorrt_bundle(root, r, seed=s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def pt_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pytorch_bundle(tmp_path_factory.mktemp("pt"), recipe("llama70b-nvfp4-b200"))


def config(path: Path) -> dict[str, Any]:
    text = path.read_text()
    assert "${" not in text, f"{path}: template placeholder left"
    return config_to_dict(parse_config(text))


def tensors(entries: list[dict[str, Any]], *, with_optional: bool = True) -> dict[str, tuple[Any, ...]]:
    out = {}
    for e in entries:
        key = (e["data_type"], [int(d) for d in e["dims"]])
        out[e["name"]] = (*key, bool(e.get("optional", False))) if with_optional else key
    return out


def upstream_tensors(rows: list[list[Any]], *, with_optional: bool = True) -> dict[str, tuple[Any, ...]]:
    return {r[0]: ((r[1], r[2], r[3]) if with_optional else (r[1], r[2])) for r in rows}


def same_tensors(ours: dict[str, tuple[Any, ...]], theirs: dict[str, tuple[Any, ...]]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, spec in theirs.items():
        mine = ours[name]
        if spec[0].startswith("${"):  # upstream fills it at deploy time; ours is a concrete type
            assert mine[0].startswith("TYPE_"), name
            assert mine[1:] == spec[1:], name
        else:
            assert mine == spec, name


def params(cfg: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}  # proto3 omits ""


def test_tensorrt_repository_matches_upstream_inflight_batcher(tmp_path: Path, trt_bundles: list[Path]) -> None:
    repo = tmp_path / "repo"
    bundle = load_bundle(trt_bundles[0])
    DirectoryRepository(repo).materialize("llama70b", bundle, 1)
    DirectoryRepository(repo).install_config("llama70b", 1)
    names = {"ensemble": "llama70b", **{role: composing_name("llama70b", 1, role) for role in ROLES}}
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == sorted(names.values())
    assert sorted([*names, *ifb.OMITTED_MODELS]) == sorted(IFB["models"])

    engine_cfg = bundle.manifest["runtime"]["engine_config"]
    cfgs = {role: config(repo / name / "config.pbtxt") for role, name in names.items()}
    for role, cfg in cfgs.items():
        up = IFB[role]
        assert cfg["name"] == names[role]
        same_tensors(tensors(cfg["input"]), upstream_tensors(up["inputs"]))
        # upstream's duplicate kv_cache_alloc_total_blocks output collapses into one name
        same_tensors(tensors(cfg["output"], with_optional=False), upstream_tensors(up["outputs"], with_optional=False))
        assert int(cfg["max_batch_size"]) == engine_cfg["max_batch_size"] == 64
        assert cfg["version_policy"] == {"specific": {"versions": ["1"]}}
        ours = params(cfg)
        theirs = set(up.get("parameters", []))
        assert theirs == set(upstream.template_parameters(role)), f"{role}: layout.json and the records disagree"
        assert theirs <= set(ours), f"{role}: upstream template parameters not rendered: {theirs - set(ours)}"
        assert set(ours) <= theirs | OWN_PARAMETERS.get(role, set()), f"{role}: parameters upstream does not have"
        unused = ifb.UNUSED_PARAMETERS.get(role, {})
        assert {k for k, v in ours.items() if v == ""} == set(unused), f"{role}: empty exactly where documented"
        assert upstream.check_triton_config(role, cfg) == []

    assert cfgs["ensemble"]["platform"] == "ensemble" and "backend" not in cfgs["ensemble"]
    assert cfgs["preprocessing"]["backend"] == cfgs["postprocessing"]["backend"] == "python"
    core = cfgs["tensorrt_llm"]
    assert core["backend"] == IFB["tensorrt_llm"]["backend_value"] == "tensorrtllm"
    assert core["model_transaction_policy"] == {"decoupled": True}
    assert core["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    p = params(core)
    engine_dir = Path(p["gpt_model_path"])
    assert engine_dir == (repo / "llama70b" / "1" / "bundle" / "engine").resolve()
    assert (engine_dir / "config.json").is_file() and (engine_dir / "rank1.engine").is_file()
    assert p["gpt_model_type"] == "inflight_fused_batching"
    # orchestrator mode spawns one worker per listed GPU, one when none is listed (libtensorrtllm.cc:162)
    assert p["gpu_device_ids"] == "0,1" and engine_cfg["tp_size"] == 2
    assert int(p["max_beam_width"]) == engine_cfg["max_beam_width"]
    assert float(p["kv_cache_free_gpu_mem_fraction"]) == 0.9 and p["enable_kv_cache_reuse"] == "true"
    assert p["batch_scheduler_policy"] == "guaranteed_no_evict"
    for key, value in IFB["tensorrt_llm"]["parameter_values"].items():
        assert p[key] == value
    for role in ("preprocessing", "postprocessing"):
        assert (Path(params(cfgs[role])["tokenizer_dir"]) / "tokenizer.json").is_file()

    steps = cfgs["ensemble"]["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == [names[r] for r in ROLES]
    assert all(int(s["model_version"]) == 1 for s in steps)  # pinned: a version routes only through its own parts
    for ours_step, theirs_step in zip(steps, IFB["ensemble"]["steps"], strict=True):
        assert ours_step["input_map"] == theirs_step["input_map"]
        assert ours_step["output_map"] == theirs_step["output_map"]

    for path in iter_content_files(repo):  # every config in the repository parses, none has a placeholder
        if path.suffix == ".pbtxt":
            config(path)
    assert (repo / names["tensorrt_llm"] / "1").is_dir()
    assert not list((repo / names["tensorrt_llm"] / "1").iterdir())  # the C++ backend needs no files there


def test_upstream_python_models_are_loaded_from_the_container(tmp_path: Path, trt_bundles: list[Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    DirectoryRepository(repo).materialize("m", load_bundle(trt_bundles[0]), 1)
    shim = repo / composing_name("m", 1, "preprocessing") / "1" / "model.py"
    text = shim.read_text()
    assert "/app/all_models" in text and "inflight_batcher_llm/preprocessing/1" in text
    assert len(text) < 2000  # a loader, not a copy of upstream code

    fake = tmp_path / "all_models" / "inflight_batcher_llm" / "preprocessing" / "1"
    fake.mkdir(parents=True)
    (fake / "helper_mod.py").write_text("VALUE = 7\n")
    (fake / "model.py").write_text("from helper_mod import VALUE\n\nclass TritonPythonModel:\n    value = VALUE\n")
    monkeypatch.setenv("TRTBUILD_TRITON_MODELS", str(tmp_path / "all_models"))
    monkeypatch.syspath_prepend(str(tmp_path))  # runpy leaves sys.path changes behind; undone after the test
    assert runpy.run_path(str(shim))["TritonPythonModel"].value == 7

    monkeypatch.setenv("TRTBUILD_TRITON_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ImportError, match=r"nowhere/inflight_batcher_llm/preprocessing/1/model\.py"):
        runpy.run_path(str(shim))


def test_pytorch_repository_matches_upstream_llmapi(tmp_path: Path, pt_bundle: Path) -> None:
    repo = tmp_path / "repo"
    bundle = load_bundle(pt_bundle)
    md = repo / "llama70b-nvfp4"
    DirectoryRepository(repo).materialize(md.name, bundle, 1)
    DirectoryRepository(repo).install_config(md.name, 1)
    assert sorted(p.name for p in repo.iterdir()) == ["llama70b-nvfp4"]  # one model, as upstream
    cfg = config(md / "config.pbtxt")
    assert cfg["backend"] == LLMAPI["backend"] == "python"
    same_tensors(tensors(cfg["input"]), upstream_tensors(LLMAPI["inputs"]))
    same_tensors(tensors(cfg["output"], with_optional=False), upstream_tensors(LLMAPI["outputs"], with_optional=False))
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]

    data = yaml.safe_load(((md / "1") / "model.yaml").read_text())
    assert set(LLMAPI["model_yaml"]["keys"]) <= set(data)
    assert next(iter(data)) == "model" and data["backend"] == LLMAPI["model_yaml"]["backend"]
    assert Path(data["model"]) == ((md / "1") / "bundle" / "checkpoint").resolve()
    assert (Path(data["model"]) / "config.json").is_file()
    r = recipe("llama70b-nvfp4-b200")
    assert data["tensor_parallel_size"] == r.target.tensor_parallel
    assert data["pipeline_parallel_size"] == r.target.pipeline_parallel
    options = yaml.safe_load((pt_bundle / "llm_api_options.yaml").read_text())
    for key in ("max_batch_size", "max_num_tokens", "kv_cache_config", "cuda_graph_config"):
        assert data[key] == options[key]  # the bundle's LLM API kwargs reach the LLM
    tc = data["triton_config"]
    assert set(LLMAPI["model_yaml"]["triton_config"]) <= set(tc)
    # model.yaml and config.pbtxt agree, so auto-complete on or off gives the same model
    assert tc["decoupled"] == cfg["model_transaction_policy"]["decoupled"] is True
    assert tc["max_batch_size"] == int(cfg.get("max_batch_size", 0)) == 0
    shim = ((md / "1") / "model.py").read_text()
    assert "llmapi/tensorrt_llm/1" in shim
    compile(shim, "model.py", "exec")


def test_each_version_has_its_own_composing_models_and_prune_removes_them(tmp_path: Path,
                                                                         trt_bundles: list[Path]) -> None:
    repo = tmp_path / "repo"
    md, r = repo / "m", DirectoryRepository(repo)
    for v, b in enumerate(trt_bundles[:2], 1):
        r.materialize("m", load_bundle(b), v)
    r.install_config("m", 2)
    steps = config(md / "config.pbtxt")["ensemble_scheduling"]["step"]
    assert {s["model_name"] for s in steps} == {composing_name("m", 2, r) for r in ROLES}
    paths = {v: params(config(repo / composing_name("m", v, "tensorrt_llm") / "config.pbtxt"))["gpt_model_path"]
             for v in (1, 2)}
    assert paths[1] != paths[2] and paths[2].endswith("/m/2/bundle/engine")
    assert config((md / "1") / VERSION_CONFIG)["version_policy"] == {"specific": {"versions": ["1"]}}

    assert r.prune("m", keep=1, protect=[2]) == [1]
    assert sorted(p.name for p in repo.iterdir()) == sorted(["m", *(composing_name("m", 2, r) for r in ROLES)])
    with pytest.raises(RepositoryError, match="immutable"):
        r.materialize("m", load_bundle(trt_bundles[1]), 2)


def test_server_repository_path_is_used_in_rendered_paths(tmp_path: Path, trt_bundles: list[Path]) -> None:
    DirectoryRepository(tmp_path / "repo").materialize("m", load_bundle(trt_bundles[0]), 1,
                                                      server_repository="/models/")
    core = config(tmp_path / "repo" / composing_name("m", 1, "tensorrt_llm") / "config.pbtxt")
    assert params(core)["gpt_model_path"] == "/models/m/1/bundle/engine"


def test_a_placeholder_or_bad_bundle_writes_nothing(tmp_path: Path, trt_bundles: list[Path]) -> None:
    repo = tmp_path / "repo"
    r = DirectoryRepository(repo)
    # refused at render time, by the upstream-records check, before any file is written
    with pytest.raises(RenderError, match=r"batch_scheduler_policy: template placeholder '\$\{policy\}' left"):
        r.materialize("m", load_bundle(trt_bundles[0]), 1, options=ServingOptions(batch_scheduler_policy="${policy}"))
    assert not repo.exists() or not list(repo.iterdir())

    bad = tmp_path / "bad"
    import shutil

    from pipeline.bundle import write_manifest

    shutil.copytree(trt_bundles[0], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").unlink()
    runtime = {k: v for k, v in manifest["runtime"].items() if k != "engine_config"}
    write_manifest(bad, name="x", backend="tensorrt", provenance={}, compatibility=manifest["compatibility"],
                   runtime=runtime)
    with pytest.raises(RenderError, match=r"runtime\.engine_config\.max_batch_size"):
        r.materialize("m", load_bundle(bad), 1)
    assert not repo.exists() or not list(repo.iterdir())


def test_publish_without_server_writes_the_rendered_repository(tmp_path: Path, trt_bundles: list[Path]) -> None:
    repo = tmp_path / "repo"
    h100 = facts_for_target("h100", gpus=2)
    done = [publish_bundle(b, repo, "m", facts=h100, keep=1, store="file:///stores/a") for b in trt_bundles]
    # keep=1 still protects the version served before each publish (the rollback target)
    assert [(p.version, p.pruned) for p in done] == [(1, []), (2, []), (3, [1])]
    md, r = repo / "m", DirectoryRepository(repo)
    assert r.served_versions("m") == [3] and r.versions("m") == [2, 3]
    assert not (repo / composing_name("m", 1, "tensorrt_llm")).exists()
    assert (repo / composing_name("m", 2, "tensorrt_llm")).is_dir()
    steps = config(md / "config.pbtxt")["ensemble_scheduling"]["step"]
    assert {s["model_name"] for s in steps} == {composing_name("m", 3, r) for r in ROLES}
    entries = history.read(r, "m")
    assert {v: (e.bundle_id, e.store) for v, e in entries.items()} == {
        p.version: (p.bundle_id, "file:///stores/a") for p in done}
    # `trtbuild serve` loads the ensemble only; its composing models load with it
    assert top_level_models(repo) == ["m"]


def test_history_refuses_unknown_versions_and_corrupt_files(tmp_path: Path) -> None:
    r = DirectoryRepository(tmp_path)
    history.record(r, "m", 3, "a" * 64, None)
    with pytest.raises(history.HistoryError, match="records no store"):
        history.lookup(r, "m", 3)
    with pytest.raises(history.HistoryError, match="version 4 is neither on disk nor in"):
        history.lookup(r, "m", 4)
    history.record(r, "m", 3, "a" * 64, "file:///s")
    history.record(r, "m", 3, "a" * 64, None)  # a later publish without --store keeps the known store
    assert history.lookup(r, "m", 3).store == "file:///s"
    (tmp_path / "m" / history.HISTORY).write_text("{not json")
    with pytest.raises(history.HistoryError, match=r"m/history\.json: unreadable"):
        history.read(r, "m")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRTBUILD_TRITON_URL", "TRTBUILD_STORE")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pipeline.cli.__main__", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=120)


def test_cli_rollback_fetches_a_pruned_version_and_refuses_a_damaged_one(
        tmp_path: Path, trt_bundles: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.store import open_store

    monkeypatch.chdir(tmp_path)

    store = open_store(f"file://{tmp_path / 'store'}")
    for b in trt_bundles:
        store.put(b)
    repo = tmp_path / "repo"
    h100 = facts_for_target("h100", gpus=2)
    for b in trt_bundles:
        publish_bundle(b, repo, "m", facts=h100, keep=1, store="file://store")  # relative: recorded absolute
    target = DirectoryRepository(repo)
    assert target.versions("m") == [2, 3] and history.read(target, "m")[1].store == store.uri

    entry = history.read(target, "m")[1]
    obj = tmp_path / "store" / "bundles" / entry.bundle_id / "files" / "engine" / "rank0.engine"
    good = obj.read_bytes()
    obj.chmod(0o644)
    obj.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    before = {p: p.read_bytes() for p in iter_content_files(repo)}
    r = cli("rollback", "m", "--to", "1", "--repository", str(repo), cwd=tmp_path)
    assert r.returncode == 1
    assert "engine/rank0.engine" in r.stderr and "Traceback" not in r.stderr
    assert {p: p.read_bytes() for p in iter_content_files(repo)} == before

    obj.write_bytes(good)
    r = cli("rollback", "m", "--to", "1", "--repository", str(repo), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["triton"]
    assert out["fetched"] and out["version"] == 1 and out["bundle_id"] == entry.bundle_id
    assert target.served_versions("m") == [1] and target.versions("m") == [1, 2, 3]
    core = config(repo / composing_name("m", 1, "tensorrt_llm") / "config.pbtxt")
    assert params(core)["gpt_model_path"] == str((repo / "m" / "1" / "bundle" / "engine").resolve())


def test_a_placeholder_in_model_yaml_writes_nothing(tmp_path: Path) -> None:
    r = recipe("llama70b-nvfp4-b200")
    bundle = pytorch_bundle(tmp_path, r)
    options = yaml.safe_load((bundle / "llm_api_options.yaml").read_text())
    options["kv_cache_config"]["dtype"] = "${KV_DTYPE}"
    (bundle / "llm_api_options.yaml").unlink()
    (bundle / "llm_api_options.yaml").write_text(yaml.safe_dump(options))
    from pipeline.bundle import write_manifest

    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").unlink()
    write_manifest(bundle, name=r.name, backend="pytorch", provenance={}, compatibility=manifest["compatibility"],
                   runtime=manifest["runtime"])
    repo = tmp_path / "repo"
    with pytest.raises(ModelConfigError, match=r"m/1/model\.yaml: unresolved template placeholders.*KV_DTYPE"):
        DirectoryRepository(repo).materialize("m", load_bundle(bundle), 1)
    assert not repo.exists() or not list(repo.iterdir())
