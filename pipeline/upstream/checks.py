"""Checks of what trtbuild hands upstream tools, against the records. Each returns one-line problems;
an empty list means upstream would accept the input as far as the records say."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pipeline.upstream.records import RecordError, load_record
from pipeline.upstream.triton import evaluate

TOOLS = {"trtllm-build": "trtllm_build", "trtllm-serve": "trtllm_serve"}
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def check_triton_config(role: str, config_dict: dict[str, Any]) -> list[str]:
    """Problems upstream's `role` model (tensorrt_llm, preprocessing, postprocessing, llmapi) has with
    a rendered config (ModelConfig JSON field names): a missing required parameter ("Cannot find
    parameter with name: X", or the python model's KeyError), a value upstream's parser rejects or
    silently ignores, a template parameter left out, a `${...}` left. Other roles: `${...}` only."""
    return [f.line(role) for f in evaluate(role, config_dict)]


def _flag_table(tool: str) -> tuple[dict[str, dict[str, Any]], dict[str, str], str | None]:
    if tool not in TOOLS:
        raise RecordError(f"no flag record for '{tool}'; known: {', '.join(TOOLS)}")
    record = load_record(TOOLS[tool])
    flags: dict[str, dict[str, Any]] = record["flags"]
    aliases = {a: f for f, spec in flags.items() for a in spec.get("aliases", [])}
    return flags, aliases, record.get("positional")


def _bad_value(spec: dict[str, Any], value: str) -> str | None:
    kind = spec["kind"]
    if kind == "int" and not _INT.match(value):
        return "an integer"
    if kind == "float" and not _FLOAT.match(value):
        return "a number"
    if kind in ("choice", "plugin_bool", "plugin_dtype") and value not in spec.get("choices", []):
        return "one of " + ", ".join(spec.get("choices", []))
    return None


def check_argv(tool: str, argv: Sequence[str]) -> list[str]:
    """Problems with a `trtllm-build` / `trtllm-serve` argument list (without the program name):
    unknown flags, missing values, values outside the recorded types and choices, stray positionals."""
    flags, aliases, positional = _flag_table(tool)
    problems: list[str] = []
    positionals: list[str] = []
    args = list(argv)
    if tool == "trtllm-serve" and args[:1] == ["serve"]:
        args = args[1:]  # `trtllm-serve serve MODEL` is the same command
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if not tok.startswith("--"):
            positionals.append(tok)
            continue
        name, eq, inline = tok.partition("=")
        flag = aliases.get(name, name)
        spec = flags.get(flag)
        if spec is None:
            problems.append(f"{tool}: unknown flag {name}")
            continue
        if spec["kind"] == "store_true":
            if eq:
                problems.append(f"{tool}: {name} takes no value")
            continue
        values = [inline] if eq else []
        if not eq:
            want = spec.get("nargs")
            while i < len(args) and not args[i].startswith("--") and (want in ("+", "*") or not values):
                values.append(args[i])
                i += 1
        if not values:
            problems.append(f"{tool}: {name} needs a value")
            continue
        for value in values:
            bad = _bad_value(spec, value)
            if bad:
                problems.append(f"{tool}: {name} {value!r} must be {bad}")
    want = 1 if positional else 0
    if len(positionals) != want:
        problems.append(f"{tool}: expected {want} positional argument{'s' if want != 1 else ''} "
                        f"({positional or 'none'}), got {len(positionals)}: {' '.join(positionals)}")
    return problems


_TYPES: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "bool": bool, "str": str}


def check_llm_api_options(options_dict: dict[str, Any]) -> list[str]:
    """Problems with LLM API options (the YAML trtllm-serve --extra_llm_api_options and Triton's llmapi
    model.yaml pass to TorchLlmArgs): unknown keys at the top and in the nested configs the record
    covers (extra=forbid upstream), and values of the wrong recorded type."""
    record = load_record("llm_api")
    models: dict[str, dict[str, Any]] = record["models"]
    problems = [f"LLM API: unknown option '{k}' (TorchLlmArgs forbids extra keys)"
                for k in options_dict if k not in models["TorchLlmArgs"]]
    for key, model in record.get("nested", {}).items():
        value = options_dict.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"LLM API: {key} must be a mapping ({model}), got {type(value).__name__}")
            continue
        problems += [f"LLM API: unknown option '{key}.{k}' ({model} forbids extra keys)"
                     for k in value if k not in models[model]]
    for dotted, kind in record.get("types", {}).items():
        head, _, leaf = dotted.partition(".")
        value = options_dict.get(head)
        if leaf:
            value = value.get(leaf) if isinstance(value, dict) else None
        if value is None:
            continue
        if kind == "list[int]":
            ok = isinstance(value, list) and all(type(v) is int for v in value)
        else:
            ok = isinstance(value, _TYPES[kind]) and not (kind in ("int", "float") and isinstance(value, bool))
        if not ok:
            problems.append(f"LLM API: {dotted} must be {kind}, got {value!r}")
    return problems
