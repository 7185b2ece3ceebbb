"""What TensorRT-LLM 1.2's Triton models do with a config's parameters, driven by the records.

`evaluate(role, config)` walks the parameter reads upstream's model of that role does
(triton_parameters.json: model_state.cc / model_instance_state.cc for `tensorrt_llm`, the python
models' `initialize` for the others) in source order and returns findings:

- `fails`: upstream fails to load the model, with upstream's own message text
  (`Cannot find parameter with name: X`, `stoi`, `Cannot convert X to a boolean.`, a python KeyError);
- `ignored`: the value does not parse but the read sits in a try block, so upstream logs a warning
  and silently uses its default;
- `convention`: a parameter of upstream's template that the config leaves out, or a `${...}` left.

`load(role, config)` is the loader stand-in tests use in place of the tensorrtllm backend (absent
from the CPU tritonserver) and of upstream's python models: it raises UpstreamLoadError with the
first `fails` finding, wrapped the way upstream reports it.

How each value is converted follows model_state.cc's GetParameter<T> specialisations (recorded in
triton_parameters.json `parsers`): std::stoi / stoul / stoull / stof parse a leading number and
ignore what follows, and throw on a string with no leading number (the empty string included);
bool accepts exactly the recorded spellings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import TrtbuildError
from pipeline.upstream.records import load_record, triton_reads

PLACEHOLDER = re.compile(r"\$\{[^}]*\}")
_INT = re.compile(r"\s*[+-]?\d+")
_FLOAT = re.compile(r"\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|0[xX][0-9a-fA-F.]+([pP][+-]?\d+)?|inf(inity)?|nan)",
                    re.IGNORECASE)
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# the std:: function each type goes through, for its exception text (libstdc++ what())
_CONVERTER = {"int32": "stoi", "int64": "stoll", "uint32": "stoul", "uint64": "stoull", "float": "stof"}
INSTANCE_ERROR = "unexpected error when creating modelInstanceState: "


class UpstreamLoadError(TrtbuildError):
    """What upstream's model would fail to load with."""


@dataclass(frozen=True)
class Finding:
    severity: str  # fails | ignored | convention
    name: str
    message: str
    where: str  # path:line of the upstream read or template key

    def line(self, role: str) -> str:
        return f"{role}: {self.message} [{self.where}]"


def parameters_of(config: dict[str, Any]) -> dict[str, str] | None:
    """{key: string_value} of a ModelConfig dict (JSON or proto field names); None when there is no
    parameters section at all."""
    params = config.get("parameters")
    if params is None:
        return None
    return {k: str(v.get("string_value", v.get("stringValue", ""))) if isinstance(v, dict) else str(v)
            for k, v in params.items()}


def convert(kind: str, value: str) -> str | None:
    """None when upstream's conversion accepts `value`, else the exception text it throws."""
    if kind in _CONVERTER:
        m = (_FLOAT if kind == "float" else _INT).match(value)
        if not m:
            return _CONVERTER[kind]
        if kind in _INT_RANGES:
            lo, hi = _INT_RANGES[kind]
            if not lo <= int(m.group(0)) <= hi:
                return _CONVERTER[kind]
        return None
    if kind == "bool":
        spec = load_record("triton_parameters")["parsers"]["bool"]
        if value in spec["true"] or value in spec["false"]:
            return None
        return f"Cannot convert {value} to a boolean."
    if kind.startswith("vector"):
        # utils.cc csvStrToVec*: comma (and {}) separated integers, each through std::stoi
        parts = [p for p in re.split(r"[,{}\s]+", value) if p]
        return None if all(_INT.match(p) for p in parts) else "stoi"
    return None  # string


def _missing_message() -> str:
    return str(load_record("triton_parameters")["messages"]["missing"]["text"])


def evaluate(role: str, config: dict[str, Any], *, check_paths: bool = False) -> list[Finding]:
    """Findings for `config` as upstream's `role` model would load it (see module doc)."""
    params = parameters_of(config)
    found: list[Finding] = []
    reads = triton_reads(role)
    roles = load_record("triton_parameters")["roles"]
    for r in reads:
        where = f"{r['path']}:{r['line']}"
        name = r["name"]
        python = r["source_kind"] == "py"
        if name == "*":  # a python model binds model_config['parameters'] itself
            if params is None:
                found.append(Finding("fails", name, "KeyError: 'parameters'", where))
            continue
        value = None if params is None else params.get(name)
        if value is None:
            if r["required"]:
                msg = f"KeyError: '{name}'" if python else _missing_message().format(name=name)
                found.append(Finding("fails", name, msg, where))
            continue
        if python:
            continue  # the python models take strings as they come
        fails = "ignored" if r["in_try"] else "fails"
        if PLACEHOLDER.search(value) and r["type"] != "string":
            found.append(Finding(fails, name, f"{name}: '{value}' is a template placeholder; "
                                 f"{_CONVERTER.get(r['type'], 'conversion')} throws", where))
            continue
        if value == "" and r["in_try"]:
            continue  # upstream's convention for "not used": the read throws and the default applies
        if r["type"] != "string":
            error = convert(r["type"], value)
            if error:
                what = (f"{name}: '{value}' does not parse as {r['type']} ({error}); upstream uses its default"
                        if r["in_try"] else error)
                found.append(Finding(fails, name, what, where))
            continue
        choices = [c for c in r.get("compared_to", []) if not PLACEHOLDER.search(c)]
        if choices and value not in choices:
            if (value == "" or PLACEHOLDER.search(value)) and r.get("accepts_empty"):
                continue
            found.append(Finding(fails, name, f"{name}: '{value}' is not one of {', '.join(choices)}"
                                 + ("; upstream uses its default" if r["in_try"] else ""), where))
    if role == "tensorrt_llm" and params is not None:
        found += _model_paths(params, check_paths, reads)
    for key in roles.get(role, {}).get("template_keys", []):
        if params is None or key["name"] not in params:
            found.append(Finding("convention", key["name"],
                                 f"{key['name']}: in upstream's template but not rendered (upstream keeps every "
                                 "template parameter, empty where unused)", f"{key['path']}:{key['line']}"))
    for key, value in (params or {}).items():
        if PLACEHOLDER.search(value):
            found.append(Finding("convention", key, f"{key}: template placeholder '{value}' left", "config.pbtxt"))
    return found


def _model_paths(params: dict[str, str], check_paths: bool, reads: list[dict[str, Any]]) -> list[Finding]:
    """model_instance_state.cc: gpt_model_path / encoder_model_path are read in try blocks whose
    existence check is swallowed by the same catch; with neither usable the load fails."""
    where = {r["name"]: f"{r['path']}:{r['line']}" for r in reads}
    usable = []
    for name in ("gpt_model_path", "encoder_model_path"):
        value = params.get(name, "")
        if value and not PLACEHOLDER.search(value) and (not check_paths or Path(value).exists()):
            usable.append(name)
    if usable:
        return []
    return [Finding("fails", "gpt_model_path", "Both encoder and decoder model paths are empty",
                    where.get("gpt_model_path", "model_instance_state.cc"))]


def load(role: str, config: dict[str, Any], *, check_paths: bool = False) -> None:
    """Raise UpstreamLoadError as upstream's `role` model would on `config`; return when it loads."""
    for f in evaluate(role, config, check_paths=check_paths):
        if f.severity == "fails":
            text = f.message if role != "tensorrt_llm" else INSTANCE_ERROR + f.message
            raise UpstreamLoadError(f"{role}: {text}", hint=f"upstream reads it at {f.where}")
