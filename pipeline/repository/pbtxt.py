"""config.pbtxt through Triton's own ModelConfig proto: render, parse, placeholders, version policy.

Rendering goes dict -> `model_config_pb2.ModelConfig` (json_format.ParseDict, so a misspelt or
unknown field is an error here instead of a load failure on the server) -> protobuf text format.
The proto is the one tritonclient ships (`tritonclient.grpc.model_config_pb2`), i.e. Triton's
real schema. A field newer than the server it is deployed to still fails at load time.

    text = render_pbtxt({"name": "m", "backend": "python", ...})
    config = parse_pbtxt(text)
    text = with_version_policy(text, specific=[3])
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from pipeline.errors import TrtbuildError

ModelConfig = model_config_pb2.ModelConfig
PLACEHOLDER = re.compile(r"\$\{[^}]*\}")


class ModelConfigError(TrtbuildError):
    """A Triton model configuration is invalid or still holds template placeholders."""


def config_from_dict(data: Mapping[str, Any]) -> Any:
    """Build a ModelConfig from a dict (proto or JSON field names). Unknown fields are errors."""
    try:
        return json_format.ParseDict(dict(data), ModelConfig())
    except json_format.ParseError as e:
        raise ModelConfigError(f"invalid model config: {_first_line(e)}") from e


def render_pbtxt(config: Mapping[str, Any] | Message, *, allow_placeholders: bool = False) -> str:
    """config.pbtxt text for a dict or ModelConfig. Refuses `${...}` left in any string."""
    msg = config if isinstance(config, Message) else config_from_dict(config)
    if not allow_placeholders:
        check_no_placeholders(msg)
    return str(text_format.MessageToString(msg, as_utf8=True))


def parse_pbtxt(text: str) -> Any:
    """Parse config.pbtxt text into a ModelConfig. Unknown fields and syntax errors raise."""
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as e:
        raise ModelConfigError(f"invalid config.pbtxt: {_first_line(e)}") from e


def config_to_dict(config: Message) -> dict[str, Any]:
    """The ModelConfig as a dict with proto field names (int64 fields come back as strings)."""
    return dict(json_format.MessageToDict(config, preserving_proto_field_name=True))


def find_placeholders(config: Message | Mapping[str, Any] | str) -> list[str]:
    """`field.path: value` for every string (map keys included) that holds `${...}`.

    Text is searched as is, so a placeholder in a comment counts too.
    """
    if isinstance(config, str):
        return [f"line {n}: {line.strip()}" for n, line in enumerate(config.splitlines(), 1)
                if PLACEHOLDER.search(line)]
    msg = config if isinstance(config, Message) else config_from_dict(config)
    return [f"{path}: {value}" for path, value in _strings(msg, "") if PLACEHOLDER.search(value)]


def check_no_placeholders(config: Message | Mapping[str, Any] | str) -> None:
    found = find_placeholders(config)
    if found:
        raise ModelConfigError(
            "unresolved template placeholders in model config: " + "; ".join(found),
            hint="render config.pbtxt from the bundle manifest; no ${...} may reach Triton",
        )


def set_version_policy(config: Message, *, specific: Sequence[int] | None = None,
                       latest: int | None = None, all_versions: bool = False) -> Any:
    """A copy of `config` whose version_policy is exactly one of: specific, latest N, all."""
    if sum((specific is not None, latest is not None, all_versions)) != 1:
        raise ModelConfigError("give exactly one of specific=, latest= or all_versions=True")
    out = ModelConfig()
    out.CopyFrom(config)
    out.ClearField("version_policy")
    if specific is not None:
        versions = sorted({int(v) for v in specific})
        if not versions or versions[0] < 1:
            raise ModelConfigError(
                f"version_policy specific needs versions >= 1, got {list(specific)}")
        out.version_policy.specific.versions.extend(versions)
    elif latest is not None:
        if latest < 1:
            raise ModelConfigError(f"version_policy latest needs num_versions >= 1, got {latest}")
        out.version_policy.latest.num_versions = latest
    else:
        out.version_policy.all.SetInParent()
    return out


def version_policy(config: Message) -> tuple[str, list[int] | int | None]:
    """("specific", [v...]), ("latest", n), ("all", None); Triton's default is ("latest", 1)."""
    kind = config.version_policy.WhichOneof("policy_choice")
    if kind == "specific":
        return "specific", sorted(config.version_policy.specific.versions)
    if kind == "all":
        return "all", None
    if kind == "latest":
        return "latest", int(config.version_policy.latest.num_versions)
    return "latest", 1


def with_version_policy(text: str, *, specific: Sequence[int] | None = None,
                        latest: int | None = None, all_versions: bool = False) -> str:
    """config.pbtxt text with its version_policy replaced (comments and layout are not kept)."""
    config = set_version_policy(parse_pbtxt(text), specific=specific, latest=latest,
                                all_versions=all_versions)
    return render_pbtxt(config, allow_placeholders=True)


def _strings(msg: Message, prefix: str) -> Iterator[tuple[str, str]]:
    for field, value in msg.ListFields():
        path = f"{prefix}{field.name}"
        if _is_map(field):
            for key in value:
                yield f"{path}[{key!r}] (key)", str(key)
                item = value[key]
                if isinstance(item, Message):
                    yield from _strings(item, f"{path}[{key!r}].")
                elif isinstance(item, str):
                    yield f"{path}[{key!r}]", item
        elif hasattr(value, "__len__") and not isinstance(value, str | bytes):  # repeated
            for i, item in enumerate(value):
                if isinstance(item, Message):
                    yield from _strings(item, f"{path}[{i}].")
                elif isinstance(item, str):
                    yield f"{path}[{i}]", item
        elif isinstance(value, Message):
            yield from _strings(value, f"{path}.")
        elif isinstance(value, str):
            yield path, value


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None
            and field.message_type.GetOptions().map_entry)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
