"""One rule for every name that becomes a path or a key.

A Triton model name is a directory of the model repository (and an S3 key prefix); an MLflow
registered model name ends up in URLs, and in a file store as a directory; a desired-state model
key is a Triton model name. A name that holds `/` or `..` writes outside the repository, an empty
one writes at its root, and a very long one fails in the filesystem half-way through a publish.
So every such name passes this rule before anything is written:

    1 to 100 characters of A-Z a-z 0-9 . _ -, the first a letter or digit, no '..'

It is stricter than what the servers accept, and within both:
- Triton core `ValidateModelName` (triton-inference-server/core,
  src/model_repository_manager/model_repository_manager.cc, commit 03f1b58c2d94): not empty, not
  only whitespace, no `..` anywhere, no `/`. Model names are directory names, so the filesystem's
  255-byte limit of a path component applies too.
- MLflow 3.17.2 `_validate_model_name` (mlflow/utils/validation.py): not empty or blank, no `/`
  or `:`, and `posixpath.normpath(name) == name` (so no `.`, `..`, leading `/`); the registry
  tables store it in a String(256) column (mlflow/store/model_registry/dbmodels/models.py).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from pipeline.errors import UsageError

MAX_LEN = 100
# The JSON schema's pattern (ECMA-262 has lookahead; Python's re too, pydantic's Rust regex not).
PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_RE = re.compile(PATTERN)
RULE = f"1-{MAX_LEN} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..'"


class InvalidNameError(UsageError):
    """A model name given to a command or a library call breaks the rule (exit 2, like any usage error)."""


def shown(value: object) -> str:
    """The value as an error shows it: quoted, long ones cut, so the message stays one line."""
    if not isinstance(value, str):
        return repr(value)
    text = value if len(value) <= 40 else f"{value[:24]}...({len(value)} characters)"
    return "'" + text.encode("unicode_escape").decode("ascii") + "'"


def name_problem(value: object) -> str | None:
    """Why `value` is not a usable name, or None when it is."""
    if not isinstance(value, str):
        return f"{shown(value)} is not a name (a string); a name is {RULE}"
    if _RE.fullmatch(value):
        return None
    return f"{shown(value)} is not a usable name; a name is {RULE}"


def check_name(value: str, what: str) -> str:
    """`value` unchanged, or InvalidNameError naming `what` (an option, an argument, a field)."""
    problem = name_problem(value)
    if problem is not None:
        raise InvalidNameError(f"{what}: {problem}")
    return value


def _validate(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# For pydantic models (recipe, desired state): the rule as a validator and in the JSON schema.
ModelName = Annotated[str, AfterValidator(_validate), Field(json_schema_extra={"pattern": PATTERN})]
