"""Load a recipe: YAML with line numbers, duplicate keys rejected, `extends`, `${VAR}`.

Every problem is reported as `FILE:LINE: field.path: message`, all of them at once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import RecipeError
from pipeline.recipe import rules
from pipeline.recipe.schema import Recipe
from pipeline.util.hashing import digest_obj

FieldPath = tuple[str | int, ...]
Origin = tuple[str, int]  # (file as given, 1-based line)

_FIELD_PREFIX = re.compile(r"([a-z_]+(?:\.[a-z_0-9]+)+): ")
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    files: list[Path]  # this file and every base it extends, child first
    declared: dict[str, Any]  # merged data before ${VAR} interpolation: safe to print and hash
    origins: dict[FieldPath, Origin] = field(default_factory=dict)
    env_vars: list[str] = field(default_factory=list)  # variables the recipe read

    @property
    def digest(self) -> str:
        """Digest of the declared recipe: environment values (endpoints, secrets) never enter it."""
        return digest_obj(self.declared)

    def with_origin(self, message: str) -> str:
        """`FILE:LINE: message` when `message` starts with a recipe field (`source.gguf.file: ...`),
        so an error found while running points at the line to fix, like a validation error."""
        m = _FIELD_PREFIX.match(message)
        if m is None:
            return message
        loc: FieldPath = tuple(m.group(1).split("."))
        if not any(k[:1] == loc[:1] for k in self.origins):
            return message
        file, line = _origin_for(self.origins, loc, (str(self.path), 1))
        return f"{file}:{line}: {message}"


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.paths: set[FieldPath] = set()

    def add(self, origin: Origin | None, path: FieldPath, message: str) -> None:
        self.paths.add(path)
        where = f"{origin[0]}:{origin[1]}" if origin else "?"
        dotted = _dotted(path)
        line = f"{where}: {dotted + ': ' if dotted else ''}{message}"
        if line not in self.items:
            self.items.append(line)


def _dotted(path: FieldPath) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


# --------------------------------------------------------------------------- YAML
def _parse_yaml(path: Path, shown: str) -> tuple[Any, dict[FieldPath, Origin]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError([f"{shown}: file not found"]) from None
    except IsADirectoryError:
        raise RecipeError([f"{shown}: is a directory, expected a recipe YAML file"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError([f"{shown}: not UTF-8 (byte {e.start}); save the recipe as UTF-8"]) from None
    if not text.strip():
        raise RecipeError([f"{shown}:1: empty recipe; see recipes/smollm2-cpu.yaml for an example"])

    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            raise RecipeError([f"{shown}:{line}: YAML syntax error: {e.problem or e.context}"]) from None
        except yaml.YAMLError as e:
            raise RecipeError([f"{shown}: YAML error: {e}"]) from None
        if node is None:
            raise RecipeError([f"{shown}:1: empty recipe; see recipes/smollm2-cpu.yaml for an example"])
        if not isinstance(node, yaml.MappingNode):
            kind = {"SequenceNode": "a list", "ScalarNode": "a single value"}.get(type(node).__name__, "not a mapping")
            raise RecipeError([f"{shown}:{node.start_mark.line + 1}: the recipe must be a mapping of "
                               f"sections (name, source, target, ...), got {kind}"])
        origins: dict[FieldPath, Origin] = {}
        problems = _Problems()
        data = _construct(loader, node, (), shown, origins, problems)
    finally:
        loader.dispose()
    if problems.items:
        raise RecipeError(problems.items)
    return data, origins


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: FieldPath, shown: str,
               origins: dict[FieldPath, Origin], problems: _Problems) -> Any:
    origins[path] = (shown, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves '<<' merge keys
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                problems.add((shown, key_node.start_mark.line + 1), path, f"key {key!r} must be a string")
                continue
            if key in out:
                first = origins.get((*path, key), (shown, 0))[1]
                problems.add((shown, key_node.start_mark.line + 1), (*path, key),
                             f"duplicate key (first defined on line {first}); remove one")
                continue
            out[key] = _construct(loader, value_node, (*path, key), shown, origins, problems)
            origins[(*path, key)] = (shown, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, v, (*path, i), shown, origins, problems) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


# --------------------------------------------------------------------------- extends
def _merge(base: Any, child: Any) -> Any:
    """Deep merge: mappings merge key by key, anything else (lists too) is replaced by the child."""
    if isinstance(base, dict) and isinstance(child, dict):
        out = dict(base)
        for k, v in child.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return child


def _load_tree(path: Path, shown: str, chain: list[Path]) -> tuple[dict[str, Any], dict[FieldPath, Origin], list[Path]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(p.name for p in [*chain, resolved])
        raise RecipeError([f"{shown}:1: extends: cycle {cycle}; remove one of the 'extends'"])
    data, origins = _parse_yaml(path, shown)
    files = [path]
    base_ref = data.get("extends")
    if base_ref is None:
        return data, origins, files
    if not isinstance(base_ref, str) or not base_ref:
        raise RecipeError([f"{shown}:{origins[('extends',)][1]}: extends: must be a path to a base recipe"])
    base_path = (path.parent / base_ref)
    base_shown = os.path.normpath(Path(shown).parent / base_ref)
    if not base_path.is_file():
        raise RecipeError([f"{shown}:{origins[('extends',)][1]}: extends: base recipe {base_shown} not found"])
    base_data, base_origins, base_files = _load_tree(base_path, base_shown, [*chain, resolved])
    base_data.pop("extends", None)
    base_data.pop("name", None)  # a name is never inherited: each recipe names itself
    merged = _merge(base_data, data)
    merged_origins = {**{k: v for k, v in base_origins.items() if k[:1] != ("name",)}, **origins}
    return merged, merged_origins, files + base_files


def recipe_files(path: str | Path) -> list[Path]:
    """The recipe and every base it extends, child first, without validating or reading the
    environment (so `plan --changed-since` can map a changed base to its children even where a
    child needs variables that are not set)."""
    return _load_tree(Path(path), str(path), [])[2]


# --------------------------------------------------------------------------- ${VAR}
def _interpolate(obj: Any, path: FieldPath, env: dict[str, str], used: list[str],
                 origins: dict[FieldPath, Origin], problems: _Problems) -> Any:
    if isinstance(obj, dict):
        return {k: _interpolate(v, (*path, k), env, used, origins, problems) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_interpolate(v, (*path, i), env, used, origins, problems) for i, v in enumerate(obj)]
    if not isinstance(obj, str) or "${" not in obj:
        return obj

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        used.append(var)
        value = env.get(var)
        if value is None or (value == "" and default is not None):
            if default is None:
                problems.add(origins.get(path), path,
                             f"environment variable {var} is not set; export it or write ${{{var}:-default}}")
                return ""
            return default
        return value

    out = ENV_RE.sub(sub, obj)
    if "${" in out and ENV_RE.search(obj) is None:
        problems.add(origins.get(path), path, "malformed ${...}; use ${VAR} or ${VAR:-default}")
    return out


def interpolate_string(value: str, env: dict[str, str] | None = None) -> str:
    """Expand ${VAR} / ${VAR:-default} in one string (schema defaults use this form too)."""
    problems = _Problems()
    out = _interpolate(value, (), dict(os.environ if env is None else env), [], {}, problems)
    if problems.items:
        raise RecipeError(problems.items)
    return str(out)


def _expand_defaults(obj: Any, env: dict[str, str], used: list[str]) -> Any:
    """Interpolate ${...} left in the validated model (schema defaults that read the environment)."""
    if isinstance(obj, dict):
        return {k: _expand_defaults(v, env, used) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand_defaults(v, env, used) for v in obj]
    if isinstance(obj, str) and "${" in obj:
        problems = _Problems()
        out = _interpolate(obj, (), env, used, {}, problems)
        if problems.items:
            raise RecipeError(problems.items)
        return out
    return obj


# --------------------------------------------------------------------------- entry point
def _origin_for(origins: dict[FieldPath, Origin], loc: FieldPath, default: Origin) -> Origin:
    for n in range(len(loc), -1, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    return default


def load_recipe(path: str | Path, *, env: dict[str, str] | None = None) -> LoadedRecipe:
    """Load, merge, interpolate and validate a recipe. Raises RecipeError listing every problem."""
    shown = str(path)
    p = Path(path)
    declared, origins, files = _load_tree(p, shown, [])
    environ = dict(os.environ if env is None else env)
    problems = _Problems()
    used: list[str] = []
    data = _interpolate(declared, (), environ, used, origins, problems)
    env_problem_paths = set(problems.paths)

    top = (shown, 1)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        _add_validation_problems(e, Recipe, origins, top, env_problem_paths, problems)
        raise RecipeError(problems.items) from None
    if problems.items:
        raise RecipeError(problems.items)

    for loc, msg in rules.check(recipe, p.parent):
        problems.add(_origin_for(origins, loc, top), loc, msg)
    if problems.items:
        raise RecipeError(problems.items)

    expanded = _expand_defaults(recipe.model_dump(mode="python"), environ, used)
    recipe = Recipe.model_validate(expanded)
    return LoadedRecipe(recipe=recipe, path=p, files=files, declared=declared, origins=origins,
                        env_vars=sorted(set(used)))


def _add_validation_problems(e: ValidationError, root: type[BaseModel], origins: dict[FieldPath, Origin],
                             top: Origin, skip: set[FieldPath], problems: _Problems) -> None:
    for err in e.errors(include_url=False):
        loc = tuple(x for x in err["loc"])
        # pydantic reports union/model errors with the model name in loc; keep field names only
        loc = tuple(x for x in loc if not (isinstance(x, str) and x[:1].isupper()))
        if loc in skip:
            continue  # already reported: the variable is unset
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; {_known_fields(loc[:-1], root)}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        problems.add(_origin_for(origins, loc, top), loc, msg)


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: str | Path, model: type[M], *, env: dict[str, str] | None = None) -> tuple[M, dict[str, Any]]:
    """Any strict YAML file the way recipes load (line numbers, duplicate keys, ${VAR}, every
    problem as FILE:LINE: field: message), validated by `model`. Returns (model, declared data)."""
    shown = str(path)
    declared, origins = _parse_yaml(Path(path), shown)
    problems = _Problems()
    data = _interpolate(declared, (), dict(os.environ if env is None else env), [], origins, problems)
    skip = set(problems.paths)
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        _add_validation_problems(e, model, origins, (shown, 1), skip, problems)
        raise RecipeError(problems.items) from None
    if problems.items:
        raise RecipeError(problems.items)
    return obj, declared


def _known_fields(loc: FieldPath, root: type[BaseModel] = Recipe) -> str:
    model: Any = root
    key_next = False  # after a dict field, the next part is one of its keys, not a field
    for part in loc:
        if isinstance(part, int) or key_next:
            key_next = False
            continue
        f = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if f is None:
            return "check the spelling"
        ann = f.annotation
        key_next = any(get_origin(a) is dict for a in (ann, *get_args(ann)))
        model = _model_in(ann)
        if model is None:
            return "check the spelling"
    names = ", ".join(model.model_fields)
    return f"known fields here: {names}"


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in getattr(ann, "__args__", ()) or ():
        m = _model_in(a)
        if m is not None:
            return m
    return None
