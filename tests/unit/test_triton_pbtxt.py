"""config.pbtxt rendering and parsing through Triton's ModelConfig proto."""

from __future__ import annotations

import copy

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from pipeline.repository import pbtxt
from pipeline.repository.pbtxt import ModelConfigError

CONFIG = {
    "name": "llm",
    "backend": "python",
    "max_batch_size": 8,
    "model_transaction_policy": {"decoupled": True},
    "version_policy": {"specific": {"versions": [2]}},
    "input": [
        {"name": "text_input", "data_type": "TYPE_STRING", "dims": [-1]},
        {"name": "max_tokens", "data_type": "TYPE_INT32", "dims": [1], "optional": True},
    ],
    "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]}],
    "instance_group": [{"kind": "KIND_CPU", "count": 2}],
    "parameters": {"bundle_dir": {"string_value": "bundle"}, "threads": {"string_value": "2"}},
}


def test_render_parse_round_trip() -> None:
    text = pbtxt.render_pbtxt(CONFIG)
    parsed = pbtxt.parse_pbtxt(text)
    assert parsed == json_format.ParseDict(CONFIG, model_config_pb2.ModelConfig())
    assert pbtxt.render_pbtxt(parsed) == text  # stable
    assert 'name: "llm"' in text and "data_type: TYPE_STRING" in text and "decoupled: true" in text
    back = pbtxt.config_to_dict(parsed)
    assert back["parameters"]["bundle_dir"] == {"string_value": "bundle"}
    assert back["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]


def test_parse_hand_written_text() -> None:
    text = """
    name: "m"  # comments are fine
    platform: "ensemble"
    max_batch_size: 0
    input [ { name: "x" data_type: TYPE_FP32 dims: [ 4, -1 ] } ]
    version_policy: { latest { num_versions: 2 } }
    """
    cfg = pbtxt.parse_pbtxt(text)
    assert cfg.input[0].dims == [4, -1]
    assert pbtxt.version_policy(cfg) == ("latest", 2)


@pytest.mark.parametrize("bad", [
    {"nam": "llm"},
    {"name": "llm", "input": [{"name": "x", "data_typ": "TYPE_FP32"}]},
    {"name": "llm", "input": [{"name": "x", "data_type": "TYPE_FLOAT"}]},
    {"name": "llm", "max_batch_size": "eight"},
])
def test_unknown_or_invalid_field_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ModelConfigError, match="invalid model config"):
        pbtxt.render_pbtxt(bad)


def test_parse_rejects_unknown_field_and_bad_syntax() -> None:
    with pytest.raises(ModelConfigError, match="no field named \"nam\""):
        pbtxt.parse_pbtxt('nam: "x"')
    with pytest.raises(ModelConfigError, match=r"invalid config\.pbtxt"):
        pbtxt.parse_pbtxt('name: "x" input [ { name: ')


def test_placeholders_detected_everywhere() -> None:
    cfg = copy.deepcopy(CONFIG)
    cfg["parameters"] = {"gpt_model_path": {"string_value": "${engine_dir}/rank0"},
                         "${triton_max_batch_size}": {"string_value": "8"}}
    cfg["input"][0]["name"] = "${input_name}"  # type: ignore[index]
    found = pbtxt.find_placeholders(cfg)
    assert "parameters['gpt_model_path'].string_value: ${engine_dir}/rank0" in found
    assert any("(key)" in f and "${triton_max_batch_size}" in f for f in found)
    assert "input[0].name: ${input_name}" in found
    with pytest.raises(ModelConfigError, match="unresolved template placeholders") as err:
        pbtxt.render_pbtxt(cfg)
    assert err.value.hint and "${...}" in err.value.hint
    text = pbtxt.render_pbtxt(cfg, allow_placeholders=True)
    assert len(pbtxt.find_placeholders(text)) == 3  # the text check finds the same lines
    assert pbtxt.find_placeholders(CONFIG) == []
    pbtxt.check_no_placeholders(pbtxt.render_pbtxt(CONFIG))
    text_found = pbtxt.find_placeholders("name: \"a\"\n# ${not_resolved}\n")
    assert text_found == ["line 2: # ${not_resolved}"]
    assert pbtxt.find_placeholders({"name": "cost is $5 {ok}"}) == []


def test_version_policy_helpers() -> None:
    cfg = pbtxt.parse_pbtxt(pbtxt.render_pbtxt(CONFIG))
    assert pbtxt.version_policy(cfg) == ("specific", [2])
    three = pbtxt.set_version_policy(cfg, specific=[3, 1, 3])
    assert pbtxt.version_policy(three) == ("specific", [1, 3])
    assert pbtxt.version_policy(cfg) == ("specific", [2])  # a copy, the input is untouched
    assert pbtxt.version_policy(pbtxt.set_version_policy(cfg, latest=2)) == ("latest", 2)
    assert pbtxt.version_policy(pbtxt.set_version_policy(cfg, all_versions=True)) == ("all", None)
    assert pbtxt.version_policy(model_config_pb2.ModelConfig()) == ("latest", 1)
    for kwargs in ({}, {"specific": [1], "latest": 1}, {"specific": []}, {"specific": [0]},
                   {"latest": 0}):
        with pytest.raises(ModelConfigError):
            pbtxt.set_version_policy(cfg, **kwargs)  # type: ignore[arg-type]
    text = pbtxt.with_version_policy(pbtxt.render_pbtxt(CONFIG), specific=[5])
    assert "versions: 5" in text and "versions: 2" not in text
    assert pbtxt.parse_pbtxt(text).parameters["threads"].string_value == "2"
