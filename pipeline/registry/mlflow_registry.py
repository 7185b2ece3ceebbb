"""MLflow as trtbuild's registry: runs (params, metrics, artifacts) and released bundle versions.

Works against `sqlite:///path/mlflow.db` (embedded, no server) and `http(s)://` (mlflow server).

- Each released bundle is a version of a registered model whose source is the store URI of the
  bundle, tagged with its digest; registering the same digest again returns the same version.
- Aliases say what is where: `candidate` (passed the gates) and `production` (served). `promote`
  moves `production` and records the previous production version in a tag of the new one, so
  `rollback` is a pointer move back (repeatable: it follows the chain of recorded versions).
- Versions are ints here (MLflow gives int over sqlite and str over REST).
- Parameters are flattened from the recipe and anything secret-looking is redacted first.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.errors import RegistryError
from pipeline.names import check_name

CANDIDATE = "candidate"
PRODUCTION = "production"
TAG_DIGEST = "bundle_digest"
TAG_RECIPE_DIGEST = "recipe_digest"
TAG_GIT_COMMIT = "git_commit"
GATE_PREFIX = "gate."
TAG_DEPLOYED = "deployed"
TAG_PREVIOUS = "trtbuild.previous_production"
TAG_PROMOTED_AT = "trtbuild.promoted_at"
TAG_ROLLED_BACK_AT = "trtbuild.rolled_back_at"
MODEL_TAG_PREVIOUS = "trtbuild.previous_production"
RUN_TAG_RECIPE = "trtbuild.recipe"
REDACTED = "***redacted***"

_MAX_PARAM_VALUE = 6000  # MLflow's limit
_EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_MAX_PER_BATCH = 100
_RESERVED_ALIAS = re.compile(r"(?i:latest)|[vV]\d+")
_SECRET_WORDS = frozenset(
    {
        "secret", "secrets", "password", "passwords", "passwd", "pwd", "token", "tokens",
        "key", "keys", "apikey", "credential", "credentials", "creds", "auth", "authorization",
        "bearer", "cookie", "session", "private",
    }
)  # fmt: skip
# Keys that contain a secret word but name no secret (a count of tokens, a cache layout).
_SECRET_SAFE = re.compile(
    r"(?i)(^|[._])(max|min|num|n)_?tokens?$|tokens?_per|_tokens$|kv_cache|tokenizer"
)
_SECRET_VALUES = re.compile(
    r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|://[^/@\s:]+:[^/@\s]+@"
)
_PARAM_KEY_BAD = re.compile(r"[^\w\-. /]")


# --------------------------------------------------------------------------- params
def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: str) -> bool:
    """A key one of whose words is secret, password, token, key, credential (and kin)."""
    last = key.rsplit(".", 1)[-1]
    if _SECRET_SAFE.search(last):
        return False
    return any(w in _SECRET_WORDS for w in _words(key))


def looks_secret_value(value: str) -> bool:
    """Known credential shapes: AWS key ids, HF/OpenAI/GitHub tokens, PEM keys, URL passwords."""
    return bool(_SECRET_VALUES.search(value))


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": [1, {"c": 2}]}} -> {"a.b.0": "1", "a.b.1.c": "2"}; values as strings."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        if not obj and prefix:
            out[prefix] = "{}"
        for k, v in obj.items():
            key = _PARAM_KEY_BAD.sub("_", str(k))
            out.update(flatten_params(v, f"{prefix}.{key}" if prefix else key))
    elif isinstance(obj, list | tuple):
        if not obj and prefix:
            out[prefix] = "[]"
        for i, v in enumerate(obj):
            out.update(flatten_params(v, f"{prefix}.{i}" if prefix else str(i)))
    elif prefix:
        if obj is None:
            text = "null"
        elif isinstance(obj, bool | int | float | str):
            text = json.dumps(obj) if isinstance(obj, bool) else str(obj)
        else:
            text = str(obj)
        out[prefix] = text
    return out


def redact_params(params: Mapping[str, str]) -> dict[str, str]:
    """Secret-looking keys and values are replaced by a marker (the key stays: it was set)."""
    return {
        k: (REDACTED if is_secret_key(k) or looks_secret_value(v) else v) for k, v in params.items()
    }


def _clip(value: str) -> str:
    if len(value) <= _MAX_PARAM_VALUE:
        return value
    return value[: _MAX_PARAM_VALUE - 16] + "...(truncated)"


def check_alias(alias: str) -> str:
    if not alias or _RESERVED_ALIAS.fullmatch(alias):
        raise RegistryError(
            f"alias '{alias}' is reserved by MLflow ('latest' and 'v<number>' name versions)",
            hint="use a name such as candidate, staging or production",
        )
    if not re.fullmatch(r"[\w\-]+", alias):
        raise RegistryError(
            f"alias '{alias}' may only contain letters, digits, '_' and '-'",
            hint="use a name such as candidate, staging or production",
        )
    return alias


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------- runs
class RunContext:
    """One MLflow run. Use as a context manager: FAILED on an exception, FINISHED otherwise."""

    def __init__(self, registry: MlflowRegistry, run_id: str, experiment_id: str) -> None:
        self.registry = registry
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._ended = False

    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Flatten, redact and log. Returns what was logged."""
        from mlflow.entities import Param

        flat = {k: _clip(v) for k, v in redact_params(flatten_params(params)).items()}
        items = [Param(k, v) for k, v in sorted(flat.items())]
        with self.registry.errors("log params"):
            for i in range(0, len(items), _MAX_PER_BATCH):
                self.registry.client.log_batch(self.run_id, params=items[i : i + _MAX_PER_BATCH])
        return flat

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        with self.registry.errors("log metrics"):
            for i in range(0, len(items), 1000):
                self.registry.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        with self.registry.errors("set run tags"):
            self.registry.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's contents, under `artifact_path` of the run."""
        path = Path(path)
        with self.registry.errors(f"log artifact {path.name}"):
            if path.is_dir():
                self.registry.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.registry.client.log_artifact(self.run_id, str(path), artifact_path)

    def list_artifacts(self, path: str | None = None) -> list[str]:
        with self.registry.errors("list artifacts"):
            return [f.path for f in self.registry.client.list_artifacts(self.run_id, path)]

    def end(self, status: str = "FINISHED") -> None:
        if self._ended:
            return
        with self.registry.errors("end run"), contextlib.redirect_stdout(sys.stderr):
            # set_terminated prints "View run ... at" links on stdout; stdout is for --json.
            self.registry.client.set_terminated(self.run_id, status=status)
        self._ended = True

    def __enter__(self) -> RunContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(RegistryError):
                self.end(status)


# --------------------------------------------------------------------------- registry
class MlflowRegistry:
    def __init__(self, tracking_uri: str, *, health_timeout: float = 5.0) -> None:
        if not tracking_uri.startswith(("sqlite:///", "http://", "https://")):
            raise RegistryError(
                f"registry URI '{tracking_uri}' is not supported; use sqlite:///path/mlflow.db or "
                "http(s)://host:port (MLFLOW_TRACKING_URI)"
            )
        self.uri = tracking_uri
        self._health_timeout = health_timeout
        self._client: Any = None
        self.artifact_root: str | None = None
        if tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri[len("sqlite:///") :])
            db.parent.mkdir(parents=True, exist_ok=True)
            # Without this MLflow puts artifacts of new experiments under ./mlruns of the cwd.
            self.artifact_root = (db.resolve().parent / "mlartifacts").as_uri()

    @property
    def client(self) -> Any:
        if self._client is None:
            if self.uri.startswith("http"):
                self._check_server()
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _check_server(self) -> None:
        try:
            with urllib.request.urlopen(  # noqa: S310 - http(s) only, checked above
                f"{self.uri.rstrip('/')}/health", timeout=self._health_timeout
            ) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        raise RegistryError(
            f"MLflow server {self.uri} is not reachable",
            hint="start it (`trtbuild local up`) or fix MLFLOW_TRACKING_URI",
        )

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as e:
            msg = str(e.message if hasattr(e, "message") else e).strip().splitlines()[0]
            raise RegistryError(f"MLflow {self.uri}: {what} failed: {msg}") from None

    # ---- runs
    def start_run(
        self,
        experiment: str,
        recipe_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        started: float | None = None,
    ) -> RunContext:
        """Create a run named after the recipe in `experiment` (created if needed); log params.

        `started` (epoch seconds, default now): when the work the run stands for began, so that
        the run's duration on its page is the whole pipeline's, not the release's alone.
        """
        from mlflow.exceptions import MlflowException

        client = self.client
        with self.errors(f"open experiment '{experiment}'"):
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                experiment_id = exp.experiment_id
            else:
                try:
                    experiment_id = client.create_experiment(  # the UI's classic run view, not GenAI's
                        experiment, artifact_location=self.artifact_root, tags=_EXPERIMENT_TAGS
                    )
                except MlflowException as e:
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    experiment_id = client.get_experiment_by_name(experiment).experiment_id
        with self.errors("create run"):
            run = client.create_run(
                experiment_id,
                run_name=recipe_name,
                start_time=int(started * 1000) if started is not None else None,
                tags={RUN_TAG_RECIPE: recipe_name, **{k: str(v) for k, v in (tags or {}).items()}},
            )
        ctx = RunContext(self, run.info.run_id, experiment_id)
        if params:
            ctx.log_params(params)
        return ctx

    def run_params(self, run_id: str) -> dict[str, str]:
        with self.errors("get run"):
            return dict(self.client.get_run(run_id).data.params)

    # ---- versions
    def _ensure_model(self, model: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def find_version(self, model: str, bundle_id: str) -> int | None:
        """The version registered for `bundle_id`, if any (the lowest, should there be two)."""
        with self.errors(f"search versions of '{model}'"):
            found = self.client.search_model_versions(
                f"name={_quote(model)} and tags.{TAG_DIGEST}={_quote(bundle_id)}"
            )
        versions = sorted(int(v.version) for v in found)
        return versions[0] if versions else None

    def register_bundle(
        self,
        model_name: str,
        store_uri: str,
        bundle_id: str,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        description: str | None = None,
    ) -> int:
        """Register the bundle stored at `store_uri` as a version; the same digest -> same version.

        `tags`: recipe_digest, gate verdicts (`gate.<name>`: pass/fail), git_commit, ...
        `description`: Markdown on the version's page (set when the version is created).
        """
        check_name(model_name, "registered model")
        with self.errors(f"register model '{model_name}'"):
            self._ensure_model(model_name)
        existing = self.find_version(model_name, bundle_id)
        if existing is not None:
            return existing
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        all_tags[TAG_DIGEST] = bundle_id
        if self.uri.startswith("http") and store_uri.startswith("file:"):
            raise RegistryError(
                f"MLflow server {self.uri} refuses a local model version source ({store_uri})",
                hint="release to an s3:// store (TRTBUILD_STORE) when the registry is a server",
            )
        with self.errors(f"create a version of '{model_name}'"):
            mv = self.client.create_model_version(
                model_name, source=store_uri, run_id=run_id, tags=all_tags, description=description
            )
        return int(mv.version)

    def set_version_tag(self, model: str, version: int, key: str, value: Any) -> None:
        with self.errors(f"tag {model} v{version}"):
            self.client.set_model_version_tag(model, str(version), key, str(value))

    def mark_deployed(self, model: str, version: int, where: str) -> None:
        """Add `where` (repository/model@vN) to the version's `deployed` tag, once."""
        current = self.version_tags(model, version).get(TAG_DEPLOYED, "")
        places = [p for p in current.split(",") if p]
        if where not in places:
            self.set_version_tag(model, version, TAG_DEPLOYED, ",".join([*places, where]))

    def version_tags(self, model: str, version: int) -> dict[str, str]:
        with self.errors(f"get {model} v{version}"):
            return dict(self.client.get_model_version(model, str(version)).tags)

    def version_source(self, model: str, version: int) -> tuple[str, str | None]:
        """(source URI, bundle digest tag) of a registered version; RegistryError if there is none."""
        with self.errors(f"get {model} v{version}"):
            mv = self.client.get_model_version(model, str(version))
        return str(mv.source), dict(mv.tags or {}).get(TAG_DIGEST)

    # ---- aliases
    def set_alias(self, model: str, alias: str, version: int) -> None:
        check_alias(alias)
        with self.errors(f"set alias '{alias}' of '{model}'"):
            self.client.get_model_version(model, str(version))
            self.client.set_registered_model_alias(model, alias, str(version))

    def get_alias(self, model: str, alias: str) -> int | None:
        """The version `alias` points at, None if it is not set (RegistryError: no such model)."""
        check_alias(alias)
        with self.errors(f"get alias '{alias}' of '{model}'"):
            aliases = self.client.get_registered_model(model).aliases or {}
        v = aliases.get(alias)
        return int(v) if v is not None else None

    def delete_alias(self, model: str, alias: str) -> None:
        check_alias(alias)
        with self.errors(f"delete alias '{alias}' of '{model}'"):
            self.client.delete_registered_model_alias(model, alias)

    def promote(self, model: str, version: int | None = None) -> tuple[int | None, int]:
        """Point `production` at `version` (default: the `candidate`). Returns (previous, new)."""
        if version is None:
            version = self.get_alias(model, CANDIDATE)
            if version is None:
                raise RegistryError(
                    f"model '{model}' has no '{CANDIDATE}' version to promote",
                    hint=f"release one with `trtbuild run`, or promote a version: "
                    f"`trtbuild promote {model} --version N`",
                )
        version = int(version)
        previous = self.get_alias(model, PRODUCTION)
        if previous == version:
            return previous, version
        self.version_tags(model, version)  # RegistryError if the version does not exist
        self.set_version_tag(model, version, TAG_PREVIOUS, "" if previous is None else previous)
        self.set_version_tag(model, version, TAG_PROMOTED_AT, _now())
        with self.errors(f"promote {model} v{version}"):
            if previous is not None:
                self.client.set_registered_model_tag(model, MODEL_TAG_PREVIOUS, str(previous))
            self.client.set_registered_model_alias(model, PRODUCTION, str(version))
        return previous, version

    def rollback(self, model: str) -> tuple[int, int]:
        """Move `production` back to the version it replaced. Returns (from, to)."""
        current = self.get_alias(model, PRODUCTION)
        if current is None:
            raise RegistryError(
                f"model '{model}' has no '{PRODUCTION}' version to roll back",
                hint=f"promote one first: `trtbuild promote {model}`",
            )
        previous_tag = self.version_tags(model, current).get(TAG_PREVIOUS, "")
        if not previous_tag.isdigit():
            raise RegistryError(
                f"{model} v{current} is in production; no earlier production version is recorded",
                hint=f"promote a specific version instead: `trtbuild promote {model} --version N`",
            )
        previous = int(previous_tag)
        self.version_tags(model, previous)  # it must still exist
        with self.errors(f"roll back {model} to v{previous}"):
            self.client.set_registered_model_alias(model, PRODUCTION, str(previous))
            self.client.set_registered_model_tag(model, MODEL_TAG_PREVIOUS, str(current))
        self.set_version_tag(model, current, TAG_ROLLED_BACK_AT, _now())
        return current, previous

    def list_versions(self, model: str) -> list[dict[str, Any]]:
        """Every version, newest first: version, aliases, digest, gates, source, created, ..."""
        with self.errors(f"list versions of '{model}'"):
            rm = self.client.get_registered_model(model)
            found = self.client.search_model_versions(f"name={_quote(model)}")
        by_version: dict[int, list[str]] = {}
        for alias, v in (rm.aliases or {}).items():
            by_version.setdefault(int(v), []).append(alias)
        rows = []
        for mv in found:
            tags = dict(mv.tags or {})
            v = int(mv.version)
            rows.append(
                {
                    "version": v,
                    "aliases": sorted(by_version.get(v, [])),
                    "digest": tags.get(TAG_DIGEST),
                    "gates": {
                        k[len(GATE_PREFIX) :]: val
                        for k, val in sorted(tags.items())
                        if k.startswith(GATE_PREFIX)
                    },
                    "source": mv.source,
                    "created": _iso(mv.creation_timestamp),
                    "deployed": tags.get(TAG_DEPLOYED),
                    "promoted_at": tags.get(TAG_PROMOTED_AT),
                    "recipe_digest": tags.get(TAG_RECIPE_DIGEST),
                    "git_commit": tags.get(TAG_GIT_COMMIT),
                    "run_id": mv.run_id or None,
                    # the release's serving profiles (pipeline/tune/profiles.py: registry_tag)
                    "profiles": _json_tag(tags.get("profiles")),
                }
            )
        return sorted(rows, key=lambda r: r["version"], reverse=True)


def open_registry(uri: str) -> MlflowRegistry:
    return MlflowRegistry(uri)


def _json_tag(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None
