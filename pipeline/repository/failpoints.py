"""Fault-injection points at every step that writes to a model repository (like etcd's gofail).

Each backend write (a version's files, a composing model, config.pbtxt, history.json, a removal)
calls `step(name)` just before it writes. When the environment variable TRTBUILD_FAILPOINT equals
that name, the process SIGKILLs itself there: no cleanup, no `finally`, exactly what a crash or an
OOM kill leaves behind. A kill-point test runs publish/switch/rollback/prune in a child process
once per name in STEPS and checks that the repository is still consistent afterwards.

Unset (the normal case) it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "TRTBUILD_FAILPOINT"

# every name step() is called with; a kill-point test iterates over this
STEPS: tuple[str, ...] = (
    "publish.composing",  # a composing model of an ensemble version (python/engine models it routes through)
    "publish.version_files",  # the version directory: bundle, rendered files, the version's own config
    "publish.config",  # config.pbtxt naming the new version (first publish, or no live server)
    "publish.history",  # history.json: the version's bundle and store
    "publish.cleanup",  # removing what a failed publish or rollback wrote
    "switch.config",  # config.pbtxt of the target version, before Triton reloads the model
    "switch.restore",  # config.pbtxt put back after a failed switch
    "rollback.version_files",  # a pruned version re-materialized from the bundle store
    "rollback.composing",
    "rollback.config",  # config.pbtxt naming the older version (no live server)
    "prune.remove",  # removing a version beyond keep, and its composing models
)


_calls: dict[str, int] = {}


def step(name: str) -> None:
    """Called before each write step; SIGKILLs this process when TRTBUILD_FAILPOINT is `name`
    (at its first call) or `name@N` (at its N-th call: a step that writes many objects, such as a
    version's files on S3, killed half-way)."""
    if name not in STEPS:  # a typo would make a kill-point test pass without killing anything
        raise ValueError(f"unknown failpoint '{name}'; add it to failpoints.STEPS")
    want = os.environ.get(ENV)
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _calls[name] = _calls.get(name, 0) + 1
    if _calls[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
