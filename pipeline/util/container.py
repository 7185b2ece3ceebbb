"""Containers that trtbuild starts with `docker run` (or `podman run`): named, with an init, stopped by name.

Signalling the client of a `docker run` does not stop its container. The client forwards the
signal to the container's PID 1, and PID 1 ignores every signal it has no handler for (trtllm-serve
and trtllm-build install none). Killing the client then leaves the container running with its GPUs,
and the next stage runs out of memory. So every container run that trtbuild starts gets `--init`
(an init that forwards signals to the program and reaps its children) and a `--name`, inserted
right after `run`. It is stopped by that name with `docker stop -t GRACE NAME` and then
`docker rm -f NAME`, which works whether or not the client process is still alive.

A recipe's prefix may already name the container (`--name X` or `--name=X`); that name is used.
Only the run's own options are searched for it: they end at the image, the first word that is
not an option or an option's value.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CLIENTS = frozenset({"docker", "podman"})
# `run` options that take no value; any other option takes the next word unless written --opt=value
_FLAGS = frozenset({
    "--rm", "--init", "-d", "--detach", "-i", "--interactive", "-t", "--tty", "--privileged", "--read-only",
    "-P", "--publish-all", "--no-healthcheck", "--oom-kill-disable", "--sig-proxy", "--disable-content-trust",
    "-q", "--quiet", "--help", "--use-api-socket", "--replace", "--rmi", "--env-host", "--no-hosts",
    "--read-only-tmpfs", "--tls-verify", "--http-proxy", "--passwd",
})
_SHORT_FLAGS = re.compile(r"^-[dtiPq]+$")  # combined short flags: -it, -dit
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9-]+")


@dataclass(frozen=True)
class Container:
    """A container started by trtbuild: the client that started it and its name."""

    client: str  # argv[0] of the run, e.g. docker or /usr/bin/podman
    name: str
    env: Mapping[str, str] | None = field(default=None, compare=False)  # the client's environment


def is_container_run(argv: Sequence[str]) -> bool:
    """`docker run ...` or `podman run ...`, whatever path the client is called by."""
    return len(argv) >= 2 and Path(argv[0]).name in CLIENTS and argv[1] == "run"


def run_options(argv: Sequence[str]) -> list[str]:
    """The options of a container run: the words after `run` up to the image."""
    opts: list[str] = []
    words = list(argv[2:])
    i = 0
    while i < len(words) and words[i].startswith("-"):
        word = words[i]
        takes_value = "=" not in word and word not in _FLAGS and not _SHORT_FLAGS.match(word)
        opts += words[i:i + 2] if takes_value else [word]
        i += 2 if takes_value else 1
    return opts


def _given_name(opts: Sequence[str]) -> str | None:
    for i, word in enumerate(opts):
        if word == "--name" and i + 1 < len(opts):
            return opts[i + 1]
        if word.startswith("--name="):
            return word.split("=", 1)[1]
    return None


def _env_keys(opts: Sequence[str]) -> set[str]:
    keys = set()
    for i, word in enumerate(opts):
        if word in ("-e", "--env") and i + 1 < len(opts):
            keys.add(opts[i + 1].split("=", 1)[0])
        elif word.startswith("--env="):
            keys.add(word[len("--env="):].split("=", 1)[0])
    return keys


def container_name(role: str) -> str:
    """trtbuild-<role>-<8 hex>: unique per start, and says which part of trtbuild started it."""
    slug = _NOT_IN_NAME.sub("-", role).strip("-").lower() or "run"
    return f"trtbuild-{slug[:40]}-{secrets.token_hex(4)}"


def named_run(argv: Sequence[str], role: str, *, env_keys: Iterable[str] = (),
              env: Mapping[str, str] | None = None) -> tuple[list[str], Container | None]:
    """`argv` with --init, --name and `-e KEY` for each of `env_keys` after `run`, and the Container.

    `env_keys` are variables the caller sets for the command: the client's environment does not
    reach a container unless `-e KEY` says so. Anything other than a container run comes back
    unchanged, with no Container.
    """
    if not is_container_run(argv):
        return list(argv), None
    opts = run_options(argv)
    added: list[str] = []
    if not any(w == "--init" or w.startswith("--init=") for w in opts):
        added.append("--init")
    name = _given_name(opts)
    if name is None:
        name = container_name(role)
        added += ["--name", name]
    passed = _env_keys(opts)
    for key in env_keys:
        if key not in passed:
            added += ["-e", key]
    return [argv[0], argv[1], *added, *argv[2:]], Container(argv[0], name, env)


def stop(container: Container, *, grace: float) -> None:
    """`docker stop -t GRACE NAME`: SIGTERM through the init, SIGKILL after `grace` seconds.

    A container already gone is fine. A client that cannot reach its daemon is logged, not
    raised: this runs while a stage is already failing or being interrupted, and that error is
    the one to report.
    """
    _client(container, ["stop", "-t", str(max(0, math.ceil(grace))), container.name], timeout=grace + 30)


def remove(container: Container) -> None:
    """`docker rm -f NAME`: also a container created by a client that died before starting it."""
    _client(container, ["rm", "-f", container.name], timeout=30)


def _client(c: Container, args: list[str], *, timeout: float) -> None:
    argv = [c.client, *args]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                           env=dict(c.env) if c.env is not None else None)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("%s: %s; the container may still be running", " ".join(argv), e)
        return
    err = (r.stderr or "").strip()
    if r.returncode != 0 and not _already_gone(err):
        log.warning("%s exited %d: %s; the container may still be running", " ".join(argv), r.returncode,
                    err.splitlines()[-1] if err else "(no output)")


def _already_gone(stderr: str) -> bool:
    low = stderr.lower()
    # docker: "No such container"; podman: "no container with name or ID ... found"; a --rm in progress
    return "no such container" in low or "no container with name" in low or "already in progress" in low


def same_path_mounts(argv: Sequence[str]) -> list[str]:
    """Container paths of `-v SRC:DST[:opts]` / `--volume` / `--mount type=bind,...,target=DST`."""
    out = []
    for i, a in enumerate(argv):
        spec = None
        if a in ("-v", "--volume") and i + 1 < len(argv):
            spec = argv[i + 1]
        elif a.startswith(("--volume=", "-v=")):
            spec = a.split("=", 1)[1]
        if spec and ":" in spec:
            src, dst = spec.split(":")[:2]
            if src == dst:  # the same path inside and out: what trtbuild's argv (host paths) needs
                out.append(dst.rstrip("/") or "/")
    return out
