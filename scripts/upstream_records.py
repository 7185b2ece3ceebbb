#!/usr/bin/env python3
"""Regenerate tests/data/upstream/*.json from upstream source checkouts.

    python scripts/upstream_records.py --trtllm DIR [--trtllm-commit SHA] \
        --modelopt DIR [--modelopt-commit SHA] --backend DIR --out tests/data/upstream

DIR is a checkout laid out like the upstream repository (NVIDIA/TensorRT-LLM; the installed
`modelopt` package directory; triton-inference-server/tensorrtllm_backend). The commit is read with
`git -C DIR rev-parse HEAD`, or given with --*-commit when DIR is not a git checkout. Only the
records whose inputs are given are rewritten; the others are left alone.

Records hold names, types, defaults and line numbers, never upstream code. The extraction is
regex/AST based and deliberately small: each function below takes a file's text and returns
plain rows, so tests/unit/test_upstream_records.py can run it on synthetic snippets.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]

# --------------------------------------------------------------------------- C++ (tensorrtllm backend)
_CPP_TYPES = {
    "std::string": "string", "int32_t": "int32", "int": "int32", "SizeType32": "int32",
    "executor::SizeType32": "int32", "uint32_t": "uint32", "int64_t": "int64", "uint64_t": "uint64",
    "size_t": "uint64", "float": "float", "bool": "bool", "std::vector<int32_t>": "vector<int32>",
    "std::vector<std::vector<int32_t>>": "vector<vector<int32>>",
    "executor::MedusaChoices": "vector<vector<int32>>", "executor::EagleChoices": "vector<vector<int32>>",
}
_READ = re.compile(r'GetParameter<(.+?)>\(\s*("([^"]*)"|(\w+))\s*\)')
_ASSIGN_LITERAL = re.compile(r'\b(\w+)\s*=\s*"([^"]*)"\s*;')
_ASSIGN_READ = re.compile(r'\b(\w+)\s*=\s*(?:model_state_->)?GetParameter<')
_STRING_OR_COMMENT = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*')


def cpp_type(raw: str) -> str:
    raw = raw.strip()
    return _CPP_TYPES.get(raw, raw)


def _blank_strings(text: str) -> str:
    """Same length and line breaks, with string literals and // comments emptied (their braces and
    keywords must not count)."""
    return _STRING_OR_COMMENT.sub(lambda m: '"' + " " * (len(m.group(0)) - 2) + '"'
                                  if m.group(0).startswith('"') else " " * len(m.group(0)), text)


def _try_depth_by_line(text: str) -> list[bool]:
    """For each line (1-based index), whether it starts inside a `try { ... }` block."""
    code = _blank_strings(text)
    stack: list[str] = []
    pending_try = False
    inside: list[bool] = [False]  # index 0 unused
    line_in_try = any(k == "try" for k in stack)
    i = 0
    while i < len(code):
        c = code[i]
        if c == "\n":
            inside.append(line_in_try)
            line_in_try = any(k == "try" for k in stack)
        elif code.startswith("try", i) and not (code[i - 1:i].isalnum() or code[i - 1:i] == "_") \
                and not (code[i + 3:i + 4].isalnum() or code[i + 3:i + 4] == "_"):
            pending_try = True
            i += 3
            continue
        elif c == "{":
            stack.append("try" if pending_try else "other")
            pending_try = False
        elif c == "}":
            if stack:
                stack.pop()
        elif not c.isspace():
            pending_try = False
        if stack and stack[-1] == "try":
            line_in_try = True
        i += 1
    inside.append(line_in_try)
    return inside


def cpp_parameter_reads(text: str) -> list[Row]:
    """Every `GetParameter<T>("name")` (or `GetParameter<T>(var)` with `var = "name";` before it):
    name, type, line, whether it sits in a try block, and the literals the result is compared to."""
    lines = text.splitlines()
    in_try = _try_depth_by_line(text)
    literals: dict[str, str] = {}
    rows: list[Row] = []
    for n, line in enumerate(lines, 1):
        for m in _ASSIGN_LITERAL.finditer(line):
            literals[m.group(1)] = m.group(2)
        for m in _READ.finditer(line):
            name = m.group(3) if m.group(3) is not None else literals.get(m.group(4) or "")
            if name is None:
                continue  # the GetParameter specialisations themselves (`(name)`)
            row: Row = {"name": name, "type": cpp_type(m.group(1)), "line": n, "in_try": in_try[n]}
            target = _ASSIGN_READ.search(line)
            if target:
                var = target.group(1)
                for earlier in reversed(lines[max(0, n - 30):n - 1]):
                    d = re.search(r'\b' + re.escape(var) + r'\s*=\s*([^;,]+)[;,]', earlier)
                    if d:
                        row["default"] = d.group(1).strip()
                        break
                if row["type"] == "string":
                    after = "\n".join(lines[n:n + 40])
                    seen = re.findall(r'\b' + re.escape(var) + r'\s*==\s*"([^"]*)"', after)
                    if seen:
                        row["compared_to"] = sorted(set(seen))
                    if re.search(r'\b' + re.escape(var) + r'\.empty\(\)', after):
                        row["accepts_empty"] = True
            rows.append(row)
    return rows


_SPECIALISATION = re.compile(r'^(.+?)\s+ModelState::GetParameter<(.+)>\(std::string const& name\)\s*$')


def cpp_parsers(text: str) -> dict[str, Row]:
    """model_state.cc: the line of each GetParameter<T> specialisation and of its error messages."""
    out: dict[str, Row] = {}
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        m = _SPECIALISATION.match(line)
        if m:
            body = "\n".join(lines[n:n + 20])
            body = body.split("\ntemplate <>", 1)[0]
            conv = re.search(r"std::(sto\w+)", body)
            kind = cpp_type(m.group(2))
            row: Row = {"line": n}
            if conv:
                row["converts_with"] = "std::" + conv.group(1)
            elif "csvStrToVec" in body:
                row["converts_with"] = re.search(r"utils::(csvStrToVec\w+)", body).group(1)  # type: ignore[union-attr]
            out[kind] = row
        if '"Cannot find parameter with name: "' in line:
            out.setdefault("_messages", {})["missing"] = {"text": "Cannot find parameter with name: {name}", "line": n}
        if '"Cannot convert "' in line:
            out.setdefault("_messages", {})["bool"] = {"text": "Cannot convert {value} to a boolean.", "line": n}
        if '"Model config doesn\'t have a parameters section"' in line:
            out.setdefault("_messages", {})["no_parameters"] = {
                "text": "Model config doesn't have a parameters section", "line": n}
    bool_row = out.get("bool")
    if bool_row is not None:
        m = re.search(r'if \(val == (.+)\)', "\n".join(lines[bool_row["line"]:bool_row["line"] + 6]))
        if m:
            bool_row["true"] = re.findall(r'"([^"]*)"', m.group(1))
        m = re.search(r'else if \(val == (.+)\)', "\n".join(lines[bool_row["line"]:bool_row["line"] + 12]))
        if m:
            bool_row["false"] = re.findall(r'"([^"]*)"', m.group(1))
    return out


# --------------------------------------------------------------------------- Triton config.pbtxt templates
_KEY = re.compile(r'^\s*key:\s*"([^"]+)"')
_VALUE = re.compile(r'^\s*string_value:\s*"([^"]*)"')


def pbtxt_parameter_keys(text: str) -> list[Row]:
    """The `parameters` entries of a config.pbtxt template (commented-out ones excluded)."""
    rows: list[Row] = []
    lines = text.splitlines()
    in_params = False
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("#"):
            continue
        if re.match(r"^\s*parameters\s*:?\s*\{", line):
            in_params = True
            continue
        m = _KEY.match(line)
        if in_params and m:
            row: Row = {"name": m.group(1), "line": n}
            for later in lines[n:n + 4]:
                v = _VALUE.match(later)
                if v:
                    row["template_value"] = v.group(1)
                    break
            rows.append(row)
            in_params = False
    return rows


# --------------------------------------------------------------------------- python models
def _is_parameters(node: ast.AST, aliases: set[str]) -> bool:
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "parameters":
        return True
    return ast.unparse(node) in aliases


def py_parameter_reads(text: str) -> list[Row]:
    """`...['parameters']['x']` (direct: a missing key is a KeyError) and `...['parameters'].get('x')`
    (optional) in a Triton python model; `conditional` when the read sits under an `if`.
    A bare `X = ...['parameters']` is recorded as the name `*` (the section itself must exist)."""
    tree = ast.parse(text)
    aliases: set[str] = set()
    rows: list[Row] = []
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def conditional(node: ast.AST) -> bool:
        p = parents.get(node)
        while p is not None and not isinstance(p, ast.FunctionDef):
            if isinstance(p, (ast.If, ast.IfExp, ast.Try)):
                return True
            p = parents.get(p)
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_parameters(node.value, set()) and len(node.targets) == 1:
            aliases.add(ast.unparse(node.targets[0]))
            rows.append({"name": "*", "access": "direct", "line": node.lineno, "conditional": conditional(node)})
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_parameters(node.value, aliases) \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            rows.append({"name": node.slice.value, "access": "direct", "line": node.lineno,
                         "conditional": conditional(node)})
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and _is_parameters(node.func.value, aliases) and node.args \
                and isinstance(node.args[0], ast.Constant):
            rows.append({"name": node.args[0].value, "access": "get", "line": node.lineno,
                         "conditional": conditional(node)})
    return sorted(rows, key=lambda r: r["line"])


# --------------------------------------------------------------------------- argparse / click / pydantic
def _const(node: ast.AST | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def argparse_flags(text: str) -> list[Row]:
    """`parser.add_argument('--x', type=..., choices=..., action=..., default=...)` calls."""
    rows: list[Row] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if not names or not names[0].startswith("-"):
                continue
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            row: Row = {"flag": names[0], "line": node.lineno}
            if names[1:]:
                row["aliases"] = names[1:]
            for key in ("type", "choices", "action", "default", "nargs"):
                if key in kw:
                    row[key] = ast.unparse(kw[key]) if key == "type" else _const(kw[key])
            rows.append(row)
    return sorted(rows, key=lambda r: r["line"])


def click_options(text: str) -> list[Row]:
    """`@click.option('--x', type=..., default=..., is_flag=...)` decorators."""
    rows: list[Row] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("click.option", "option"):
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            flags = [n for n in names if n.startswith("-")]
            if not flags:
                continue
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            row: Row = {"flag": flags[0], "line": node.lineno}
            if flags[1:]:
                row["aliases"] = flags[1:]
            for key in ("type", "default", "is_flag", "multiple"):
                if key in kw:
                    row[key] = ast.unparse(kw[key]) if key == "type" else _const(kw[key])
            rows.append(row)
    return sorted(rows, key=lambda r: r["line"])


def pydantic_fields(text: str, class_name: str) -> list[Row]:
    """Annotated fields of one class: name, annotation, default (from `= Field(default=...)` or `= x`)."""
    rows: list[Row] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    row: Row = {"name": item.target.id, "annotation": ast.unparse(item.annotation),
                                "line": item.lineno}
                    v = item.value
                    if isinstance(v, ast.Call) and ast.unparse(v.func).endswith("Field"):
                        kw = {k.arg: k.value for k in v.keywords if k.arg}
                        if "default" in kw:
                            row["default"] = _const(kw["default"])
                        elif "default_factory" in kw:
                            row["default_factory"] = ast.unparse(kw["default_factory"])
                        elif v.args:
                            row["default"] = _const(v.args[0])
                        else:
                            row["required"] = True
                    elif v is not None:
                        row["default"] = _const(v)
                    else:
                        row["required"] = True
                    rows.append(row)
    return rows


def function_signature(text: str, func: str) -> Row | None:
    """Parameters of a top-level function with their defaults (unparsed) and the `def` line."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            a = node.args
            params: list[Row] = []
            positional = a.posonlyargs + a.args
            defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
            for arg, d in zip(positional, defaults, strict=True):
                params.append({"name": arg.arg, **({"default": ast.unparse(d)} if d is not None else {})})
            for arg, kd in zip(a.kwonlyargs, a.kw_defaults, strict=True):
                params.append({"name": arg.arg, "keyword_only": True,
                               **({"default": ast.unparse(kd)} if kd is not None else {})})
            return {"line": node.lineno, "parameters": params}
    return None


def dict_literal(text: str, name: str) -> Row | None:
    """A module-level `NAME = {...}` of constants: its line and value."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return {"line": node.lineno, "value": ast.literal_eval(node.value)}
    return None


def call_lines(text: str, func: str) -> list[int]:
    """Lines where `func(...)` is called."""
    return sorted(n.lineno for n in ast.walk(ast.parse(text))
                  if isinstance(n, ast.Call) and ast.unparse(n.func).split(".")[-1] == func)


# --------------------------------------------------------------------------- records
TRTLLM = "NVIDIA/TensorRT-LLM"
IFB = "triton_backend/inflight_batcher_llm/src"
MODELS = "triton_backend/all_models"
ROLE_SOURCES = {
    # role: (template config.pbtxt, [(file, kind)]) ; kind cpp (backend C++) or py (python model)
    "tensorrt_llm": (f"{MODELS}/inflight_batcher_llm/tensorrt_llm/config.pbtxt",
                     [(f"{IFB}/model_state.cc", "cpp"), (f"{IFB}/model_instance_state.cc", "cpp")]),
    "preprocessing": (f"{MODELS}/inflight_batcher_llm/preprocessing/config.pbtxt",
                      [(f"{MODELS}/inflight_batcher_llm/preprocessing/1/model.py", "py")]),
    "postprocessing": (f"{MODELS}/inflight_batcher_llm/postprocessing/config.pbtxt",
                       [(f"{MODELS}/inflight_batcher_llm/postprocessing/1/model.py", "py")]),
    "llmapi": (f"{MODELS}/llmapi/tensorrt_llm/config.pbtxt", [(f"{MODELS}/llmapi/tensorrt_llm/1/model.py", "py")]),
}
NUMERIC = {"int32", "uint32", "int64", "uint64", "float"}


def empty_effect(row: Row) -> str:
    """What an empty (or unfilled `${...}`) value does, from the type and whether a try block catches."""
    if row["source_kind"] == "py":
        return "read as the empty string"
    if row["type"] == "string":
        return "read as the empty string"
    if row["in_try"]:
        return "conversion throws inside a try block: the backend logs a warning and uses its default"
    return "conversion throws outside any try block: the model fails to load"


def triton_parameters(root: Path, commits: dict[str, str]) -> dict[str, Any]:
    roles: dict[str, Any] = {}
    for role, (template, sources) in ROLE_SOURCES.items():
        tpath = root / template
        keys = [{"repo": TRTLLM, "path": template, "commit": commits[template], **r}
                for r in pbtxt_parameter_keys(tpath.read_text())] if tpath.exists() else []
        reads: list[Row] = []
        for path, kind in sources:
            p = root / path
            if not p.exists():
                continue
            found = cpp_parameter_reads(p.read_text()) if kind == "cpp" else py_parameter_reads(p.read_text())
            for r in found:
                row = {"name": r.pop("name"), "repo": TRTLLM, "path": path, "commit": commits[path], **r,
                       "source_kind": kind}
                if kind == "cpp":
                    row["required"] = not row["in_try"]
                else:
                    row["type"] = "string"
                    row["required"] = row["access"] == "direct" and not row["conditional"]
                row["empty"] = empty_effect(row)
                reads.append(row)
        roles[role] = {"template_keys": keys, "reads": reads}
    parsers_src = f"{IFB}/model_state.cc"
    parsers = {k: {"repo": TRTLLM, "path": parsers_src, "commit": commits[parsers_src], **v}
               for k, v in cpp_parsers((root / parsers_src).read_text()).items() if k != "_messages"}
    messages = {k: {"repo": TRTLLM, "path": parsers_src, "commit": commits[parsers_src], **v}
                for k, v in cpp_parsers((root / parsers_src).read_text()).get("_messages", {}).items()}
    return {"_doc": "see README.md: Triton parameters upstream reads, per model role",
            "roles": roles, "parsers": parsers, "messages": messages}


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=30)
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip()


def commits_for(root: Path, given: str | None, files: list[str], per_file: dict[str, str]) -> dict[str, str]:
    """Each file's commit: --*-file-commit PATH=SHA first (the index stores files at different
    commits), then --*-commit, then the checkout's HEAD."""
    head = given or git_commit(root)
    out = {}
    for f in files:
        c = per_file.get(f) or head
        if not c:
            sys.exit(f"{root}: not a git checkout; give --trtllm-commit or --file-commit {f}=SHA")
        out[f] = c
    return out


def blob_commit(git_dir: Path, file: Path, repo_path: str) -> str | None:
    """A commit of `git_dir` at which `repo_path` is byte-identical to `file` (the one that introduced
    that blob): how an installed wheel's file is tied to a commit when the release tag is missing."""
    blob = subprocess.run(["git", "hash-object", str(file)], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
    out = []
    for scope in (["HEAD"], ["--all"]):  # the main line first, then any branch
        out += subprocess.run(["git", "-C", str(git_dir), "log", *scope, "--format=%H", f"--find-object={blob}",
                               "--", repo_path], capture_output=True, text=True, check=False,
                              timeout=300).stdout.split()
    for c in out:
        at = subprocess.run(["git", "-C", str(git_dir), "rev-parse", "-q", "--verify", f"{c}:{repo_path}"],
                            capture_output=True, text=True, check=False, timeout=30).stdout.strip()
        if at == blob:
            return c
    return None


def modelopt_records(root: Path, commit: str | None, repo: str, prefix: str,
                     git_dir: Path | None = None) -> dict[str, Any]:
    """ModelOpt export entry points (root is the `modelopt` package directory). With `git_dir`, each
    file's commit is the one where it is byte-identical to the installed copy."""
    def commit_of(path: Path) -> str:
        c = blob_commit(git_dir, path, prefix + str(path.relative_to(root))) if git_dir else None
        if not (c or commit):
            sys.exit(f"{path}: no commit of {git_dir} holds this file; give --modelopt-commit")
        return c or commit  # type: ignore[return-value]

    exp = root / "torch/export"
    rows: dict[str, Any] = {}
    src = {"export_hf_checkpoint": exp / "unified_export_hf.py",
           "export_tensorrt_llm_checkpoint": exp / "model_config_export.py"}
    for func, path in src.items():
        sig = function_signature(path.read_text(), func)
        if sig:
            rows[func] = {"repo": repo, "path": prefix + str(path.relative_to(root)), "commit": commit_of(path),
                          **sig}
    table_path = exp / "model_utils.py"
    table = dict_literal(table_path.read_text(), "MODEL_NAME_TO_TYPE")
    decoder = None
    if table:
        decoder = {"repo": repo, "path": prefix + str(table_path.relative_to(root)), "commit": commit_of(table_path),
                   "line": table["line"], "table": table["value"],
                   "decoder_types": sorted(set(table["value"].values()))}
    offload = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if "has_accelerate_offload" not in text:
            continue
        for line in call_lines(text, "has_accelerate_offload"):
            offload.append({"repo": repo, "path": prefix + str(path.relative_to(root)), "commit": commit_of(path),
                            "line": line})
    return {"_doc": "see README.md: ModelOpt export entry points", "entry_points": rows,
            "model_name_to_type": decoder, "has_accelerate_offload_calls": offload}


def dockerfile_args(text: str) -> dict[str, Row]:
    """`ARG NAME=value` lines of a Dockerfile (the first one of each name)."""
    out: dict[str, Row] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^ARG\s+(\w+)=(\S+)", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = {"value": m.group(2), "line": n}
    return out


def requirement_pin(text: str, package: str) -> Row | None:
    """The requirements.txt line pinning `package` (its spec after the name)."""
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^" + re.escape(package) + r"(\[[^\]]*\])?\s*([<>=~!][^#;\s]*)", line.strip())
        if m:
            return {"spec": m.group(2), "line": n}
    return None


BACKEND = "triton-inference-server/tensorrtllm_backend"
DOCKERFILE = "dockerfile/Dockerfile.triton.trt_llm_backend"
DOCKER_ARGS = ("BASE_IMAGE", "PYTORCH_IMAGE", "TRT_VER", "TENSORRTLLM_REPO_TAG", "TENSORRTLLM_VER")


def git_show(git_dir: Path, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(git_dir), "show", f"{commit}:{path}"], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def backend_images(git_dir: Path, commits: list[str]) -> list[Row]:
    """Per tensorrtllm_backend commit: its Dockerfile's image/version ARGs and the TensorRT-LLM
    submodule commit it pins."""
    rows = []
    for c in commits:
        full = subprocess.run(["git", "-C", str(git_dir), "rev-parse", c], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        subject = subprocess.run(["git", "-C", str(git_dir), "log", "-1", "--format=%ad %s", "--date=short", full],
                                 capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        tree = subprocess.run(["git", "-C", str(git_dir), "ls-tree", full, "tensorrt_llm"], capture_output=True,
                              text=True, check=True, timeout=30).stdout.split()
        args = dockerfile_args(git_show(git_dir, full, DOCKERFILE))
        rows.append({"repo": BACKEND, "commit": full, "subject": subject,
                     "tensorrt_llm_submodule": tree[2] if len(tree) > 2 else None,
                     "dockerfile_args": {k: {"repo": BACKEND, "path": DOCKERFILE, "commit": full, **args[k]}
                                         for k in DOCKER_ARGS if k in args}})
    return rows


BUILD_PY = "tensorrt_llm/commands/build.py"


def _kind(row: Row) -> str:
    if row.get("action") == "store_true":
        return "store_true"
    if isinstance(row.get("choices"), list):
        return "choice"
    return {"int": "int", "float": "float"}.get(str(row.get("type")), "str")


def trtllm_build_records(root: Path, commit: str, existing: dict[str, Any]) -> dict[str, Any]:
    """trtllm-build flags from build.py's parse_arguments(), merged into the existing record: an
    existing entry keeps its kind/choices/notes (argparse choices that are not literals, enum types)
    and gets the read's provenance; plugin flags (added by add_plugin_argument from PluginConfig's
    fields, not by literal add_argument calls) keep theirs."""
    text = (root / BUILD_PY).read_text()
    flags: dict[str, Row] = dict(existing.get("flags", {}))
    for row in argparse_flags(text):
        spec = dict(flags.get(row["flag"], {}))
        spec.setdefault("kind", _kind(row))
        if "aliases" in row:
            spec["aliases"] = row["aliases"]
        if isinstance(row.get("choices"), list):
            spec["choices"] = row["choices"]
        spec.update({"repo": TRTLLM, "path": BUILD_PY, "commit": commit, "line": row["line"]})
        flags[row["flag"]] = spec
    plugin_lines = call_lines(text, "add_plugin_argument")
    for spec in flags.values():
        if spec.get("via") == "add_plugin_argument" and plugin_lines:
            spec.update({"repo": TRTLLM, "path": BUILD_PY, "commit": commit, "line": plugin_lines[0]})
    return {**existing, "flags": flags}


def init_parameters(text: str, class_name: str) -> list[Row]:
    """`__init__` keyword parameters of a class with their defaults and lines; for transformers 5
    style dataclass configs (no __init__), the annotated class fields instead."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    a = item.args
                    defaults = [None] * (len(a.args) - len(a.defaults)) + list(a.defaults)
                    return [{"name": arg.arg, "line": arg.lineno, **({"default": _const(d)} if d is not None else {})}
                            for arg, d in zip(a.args, defaults, strict=True) if arg.arg != "self"]
            return [{"name": r["name"], "line": r["line"], **({"default": r["default"]} if "default" in r else {})}
                    for r in pydantic_fields(text, class_name)]
    return []


def getattr_reads(text: str) -> list[Row]:
    """`getattr(obj, "name", default)` calls: how a converter reads an optional config attribute."""
    rows = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and len(node.args) == 3 \
                and isinstance(node.args[1], ast.Constant):
            rows.append({"name": node.args[1].value, "default": _const(node.args[2]), "line": node.lineno})
    return sorted(rows, key=lambda r: r["line"])


LLAMA_CONFIG_PY = "tensorrt_llm/models/llama/config.py"


def trtllm_checkpoint_keys(root: Path, commit: str) -> dict[str, Any]:
    """RoPE keys of a TensorRT-LLM LLaMA checkpoint config (what trtllm-build reads) and the HF keys
    its from_hugging_face converter reads them from."""
    text = (root / LLAMA_CONFIG_PY).read_text()
    src = {"repo": TRTLLM, "path": LLAMA_CONFIG_PY, "commit": commit}
    init = {r["name"]: r for r in init_parameters(text, "LLaMAConfig")}
    if not init:  # keyword-only parameters: read them from the signature
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                for arg, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True):
                    init[arg.arg] = {"name": arg.arg, "line": arg.lineno,
                                     **({"default": _const(d)} if d is not None else {})}
                break
    keys = {k: {**src, "line": init[k]["line"], "default": init[k].get("default")}
            for k in ("rotary_base", "rotary_scaling") if k in init}
    hf = {r["name"]: {**src, "line": r["line"], "default": r["default"]} for r in getattr_reads(text)
          if r["name"] in ("rope_theta", "rope_scaling")}
    return {"LLaMAConfig": keys, "from_hugging_face_reads": hf}


TRANSFORMERS = "huggingface/transformers"
HF_CONFIGS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig"}
ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings")


def transformers_config_keys(pkg: Path, release: str) -> dict[str, Any]:
    """The RoPE-related config.json keys each HF config class takes (pkg: the `transformers` package dir)."""
    out: dict[str, Any] = {}
    for model, cls in HF_CONFIGS.items():
        rel = f"models/{model}/configuration_{model}.py"
        rows = {r["name"]: r for r in init_parameters((pkg / rel).read_text(), cls)}
        out[model] = {k: {"repo": TRANSFORMERS, "path": f"src/transformers/{rel}", "commit": None,
                          "release": release, "line": rows[k]["line"],
                          **({"default": rows[k]["default"]} if "default" in rows[k] else {})}
                      for k in ROPE_KEYS if k in rows}
        out[model]["_absent"] = [k for k in ROPE_KEYS if k not in rows]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trtllm", type=Path, help="NVIDIA/TensorRT-LLM checkout (or files laid out like it)")
    ap.add_argument("--trtllm-commit")
    ap.add_argument("--file-commit", action="append", default=[], metavar="PATH=SHA",
                    help="commit of one TensorRT-LLM file when files come from different commits")
    ap.add_argument("--modelopt", type=Path, help="the installed `modelopt` package directory")
    ap.add_argument("--modelopt-commit")
    ap.add_argument("--modelopt-repo", default="NVIDIA/Model-Optimizer")
    ap.add_argument("--modelopt-git", type=Path,
                    help="a Model-Optimizer git dir to tie each installed file to a commit")
    ap.add_argument("--backend", type=Path, help="triton-inference-server/tensorrtllm_backend git dir")
    ap.add_argument("--backend-commit", action="append", default=[], help="backend commits to record (repeat)")
    ap.add_argument("--transformers", action="append", default=[], metavar="DIR=RELEASE",
                    help="an installed/unpacked `transformers` package dir and its release (repeat)")
    ap.add_argument("--out", type=Path, default=Path("tests/data/upstream"))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    per_file = dict(x.split("=", 1) for x in a.file_commit)
    if a.trtllm:
        files = [t for t, _ in ROLE_SOURCES.values()] + [p for _, s in ROLE_SOURCES.values() for p, _ in s]
        commits = commits_for(a.trtllm, a.trtllm_commit, files, per_file)
        write(a.out / "triton_parameters.json", triton_parameters(a.trtllm, commits))
        if (a.trtllm / LLAMA_CONFIG_PY).exists():
            path = a.out / "config_keys.json"
            data = json.loads(path.read_text()) if path.exists() else {}
            c = commits_for(a.trtllm, a.trtllm_commit, [LLAMA_CONFIG_PY], per_file)[LLAMA_CONFIG_PY]
            data["trtllm_checkpoint"] = trtllm_checkpoint_keys(a.trtllm, c)
            write(path, data)
        if (a.trtllm / BUILD_PY).exists():
            path = a.out / "trtllm_build.json"
            build_commit = commits_for(a.trtllm, a.trtllm_commit, [BUILD_PY], per_file)[BUILD_PY]
            write(path, trtllm_build_records(a.trtllm, build_commit,
                                             json.loads(path.read_text()) if path.exists() else {}))
    if a.modelopt:
        commit = a.modelopt_commit or git_commit(a.modelopt)
        write(a.out / "modelopt.json", modelopt_records(a.modelopt, commit, a.modelopt_repo, "modelopt/",
                                                        a.modelopt_git))
    if a.transformers:
        path = a.out / "config_keys.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data["transformers"] = {rel: transformers_config_keys(Path(d), rel)
                                for d, rel in (x.rsplit("=", 1) for x in a.transformers)}
        write(path, data)
    if a.backend:
        path = a.out / "containers.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data["tensorrtllm_backend"] = backend_images(a.backend, a.backend_commit or ["HEAD"])
        write(path, data)
    return 0


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
