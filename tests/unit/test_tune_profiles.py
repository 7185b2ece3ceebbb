"""Serving profiles: in the bundle (and its id), chosen at render/publish, refused when unknown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.bundle import facts_for_target, load_bundle, write_manifest
from pipeline.errors import IntegrityError
from pipeline.repository.publish import publish_bundle
from pipeline.repository.render import ServingOptions, composing_name
from pipeline.tune.profiles import PROFILES_FILE, ProfileError, profile_names, read_profiles, write_tuned_bundle
from tests.triton_bundles import recipe, tensorrt_bundle
from tests.unit.test_triton_render import cli, config, params

PROFILES = {
    "throughput": {"settings": {"max_batch_size": 16, "instances": 2}, "measured": {"goodput": 3.0}},
    "latency": {"settings": {"max_batch_size": 4, "instances": 1}, "measured": {"goodput": 2.5}},
}


def reference_bundle(root: Path) -> Path:
    b = root / "ref"
    (b / "checkpoint").mkdir(parents=True)
    (b / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    write_manifest(b, name="r", backend="reference", provenance={"recipe": "r"},
                   compatibility={"backend": "reference", "gpu": "cpu", "sm": None, "max_batch_size": 16,
                                  "max_num_tokens": 2048},
                   runtime={"kind": "reference", "checkpoint": "checkpoint", "dtype": "float32",
                            "max_batch_size": 16, "max_seq_len": 1024, "max_num_tokens": 2048})
    return b


def tuned(root: Path, src: Path, profiles: dict[str, Any] = PROFILES, default: str = "throughput") -> Path:
    dst = root / f"tuned-{src.name}"
    write_tuned_bundle(src, dst, profiles=profiles, default=default, tune={"budget_s": 60})
    return dst


def test_profiles_are_part_of_the_bundle_id(tmp_path: Path) -> None:
    src = reference_bundle(tmp_path)
    dst = tuned(tmp_path, src)
    before, after = load_bundle(src), load_bundle(dst)  # both verify
    assert after.id != before.id
    assert PROFILES_FILE in {f["path"] for f in after.manifest["files"]}
    assert after.manifest["runtime"]["default_profile"] == "throughput"
    assert profile_names(after) == ["latency", "throughput"] and profile_names(before) == []
    doc = read_profiles(after)
    assert doc is not None and doc["build_bundle_id"] == before.id
    # the build's files are shared, not copied
    assert (dst / "checkpoint/model.safetensors").stat().st_ino == (src / "checkpoint/model.safetensors").stat().st_ino
    # a changed profile is a changed bundle
    text = (dst / PROFILES_FILE).read_text()
    (dst / PROFILES_FILE).write_text(text.replace('"max_batch_size": 4', '"max_batch_size": 8'))
    with pytest.raises(IntegrityError, match=PROFILES_FILE):
        load_bundle(dst)


def reference_params(repo: Path, model: str) -> tuple[dict[str, str], int]:
    cfg = config(repo / model / "config.pbtxt")
    return params(cfg), int(cfg["instance_group"][0]["count"])


def test_reference_render_uses_the_default_or_the_chosen_profile(tmp_path: Path) -> None:
    b = tuned(tmp_path, reference_bundle(tmp_path))
    cpu = facts_for_target("cpu")
    publish_bundle(b, tmp_path / "repo", "dflt", facts=cpu)
    p, count = reference_params(tmp_path / "repo", "dflt")
    assert (p["profile"], p["max_batch_size"], count) == ("throughput", "16", 2)
    publish_bundle(b, tmp_path / "repo", "lat", facts=cpu, options=ServingOptions(profile="latency"))
    p, count = reference_params(tmp_path / "repo", "lat")
    assert (p["profile"], p["max_batch_size"], count) == ("latency", "4", 1)
    # an untuned bundle renders as before: no profile, the runtime reads the manifest's limits
    publish_bundle(reference_bundle(tmp_path / "plain"), tmp_path / "repo", "plain", facts=cpu)
    p, count = reference_params(tmp_path / "repo", "plain")
    assert "profile" not in p and count == 1 and p["max_batch_size"] == "16"


def test_unknown_profile_and_profile_of_untuned_bundle_are_refused(tmp_path: Path) -> None:
    b = tuned(tmp_path, reference_bundle(tmp_path))
    cpu = facts_for_target("cpu")
    with pytest.raises(ProfileError, match=r"has no profile 'fast'; it has latency, throughput"):
        publish_bundle(b, tmp_path / "repo", "m", facts=cpu, options=ServingOptions(profile="fast"))
    assert not (tmp_path / "repo" / "m").exists()  # nothing half-written
    with pytest.raises(ProfileError, match=r"has no profiles \(it was not tuned\)"):
        publish_bundle(reference_bundle(tmp_path / "p"), tmp_path / "repo", "m", facts=cpu,
                       options=ServingOptions(profile="latency"))
    # the same bundle is already version 1 with the default profile: another profile is refused
    publish_bundle(b, tmp_path / "repo", "m", facts=cpu)
    with pytest.raises(ProfileError, match="already version 1 of m, served with profile throughput, not latency"):
        publish_bundle(b, tmp_path / "repo", "m", facts=cpu, options=ServingOptions(profile="latency"))
    publish_bundle(b, tmp_path / "repo", "m", facts=cpu, options=ServingOptions(profile="throughput"))  # same: fine


def test_tensorrt_render_takes_the_profile_scheduler_settings(tmp_path: Path) -> None:
    src = tensorrt_bundle(tmp_path, recipe("llama70b"), seed=7)
    profiles = {"throughput": {"settings": {"kv_cache_free_gpu_memory_fraction": 0.7, "enable_chunked_context": False,
                                            "batch_scheduler_policy": "max_utilization"}, "measured": {}}}
    b = tuned(tmp_path, src, profiles)
    publish_bundle(b, tmp_path / "repo", "m", facts=facts_for_target("h100", gpus=2))
    p = params(config(tmp_path / "repo" / composing_name("m", 1, "tensorrt_llm") / "config.pbtxt"))
    assert (p["kv_cache_free_gpu_mem_fraction"], p["enable_chunked_context"], p["batch_scheduler_policy"]) == (
        "0.7", "false", "max_utilization")


def test_cli_publish_profile(tmp_path: Path) -> None:
    b = tuned(tmp_path, reference_bundle(tmp_path))
    bad = cli("publish", str(b), "--model", "m", "--repository", str(tmp_path / "repo"), "--target", "cpu",
              "--profile", "fast", cwd=tmp_path)
    assert bad.returncode == 1 and "has no profile 'fast'" in bad.stderr and "Traceback" not in bad.stderr
    ok = cli("publish", str(b), "--model", "m", "--repository", str(tmp_path / "repo"), "--target", "cpu",
             "--profile", "latency", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["profile"] == "latency"
    assert reference_params(tmp_path / "repo", "m")[0]["profile"] == "latency"


def test_registry_tag_carries_profiles_for_list(tmp_path: Path) -> None:
    from pipeline.tune.profiles import registry_tag

    assert registry_tag(load_bundle(reference_bundle(tmp_path))) is None
    tag = registry_tag(load_bundle(tuned(tmp_path, reference_bundle(tmp_path / "t"))))
    assert tag is not None and len(tag) < 5000  # an MLflow tag value
    doc = json.loads(tag)
    assert doc["default"] == "throughput"
    assert doc["profiles"]["latency"] == {"settings": {"max_batch_size": 4, "instances": 1}, "goodput": 2.5,
                                          "ttft_p99": None}
