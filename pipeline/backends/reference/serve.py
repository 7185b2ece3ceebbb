"""Load a reference bundle into a ReferenceRuntime (used by the Triton model, the OpenAI server and the gates).

The scheduler's limits come, first found wins, from: the caller (the OpenAI server's
--max-batch-size/--max-num-tokens/--max-kv-tokens), the environment of the serving process
(TRTBUILD_REF_MAX_BATCH_SIZE, TRTBUILD_REF_MAX_NUM_TOKENS, TRTBUILD_REF_MAX_KV_TOKENS; for
tritonserver, its environment), then the bundle's build facts (manifest `runtime`:
max_batch_size, max_num_tokens, max_kv_tokens, written by the build stage), then the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.backends.reference.pacing import StepPacing
from pipeline.backends.reference.runtime import ReferenceRuntime
from pipeline.bundle import load_bundle
from pipeline.errors import CompatibilityError

# option -> environment variable; every one a positive integer
ENV = {"max_batch_size": "TRTBUILD_REF_MAX_BATCH_SIZE", "max_num_tokens": "TRTBUILD_REF_MAX_NUM_TOKENS",
       "max_kv_tokens": "TRTBUILD_REF_MAX_KV_TOKENS"}
DEFAULTS = {"max_batch_size": 8, "max_num_tokens": 8192, "max_kv_tokens": 0}  # 0: batch x max_seq_len


def scheduler_options(facts: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
                      overrides: Mapping[str, int | None] | None = None) -> dict[str, int]:
    """The runtime's max_batch_size/max_num_tokens/max_kv_tokens; a bad value is a one-line ValueError."""
    env = os.environ if env is None else env
    overrides = overrides or {}
    out = {}
    for name, var in ENV.items():
        given = overrides.get(name)
        raw, where = (given, f"--{name.replace('_', '-')}") if given is not None else (
            (env[var], var) if env.get(var, "").strip() else (facts.get(name), f"bundle runtime.{name}"))
        if raw is None:
            out[name] = DEFAULTS[name]
            continue
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError(f"{where}={raw!r}: not an integer; give a positive number of requests/tokens") from None
        if value < 1:
            raise ValueError(f"{where}={raw!r}: must be >= 1")
        out[name] = value
    return out


def load_runtime(bundle_dir: Path, *, verify: bool = True, activations: bool = False,
                 pacing: StepPacing | None = None, max_seq_len: int | None = None,
                 overrides: Mapping[str, int | None] | None = None) -> ReferenceRuntime:
    """Serve a reference bundle.

    `activations` fake-quantizes Linear inputs and K/V as an engine does (see quant.loader). The
    accuracy gate turns it on and batches only sequences of one length (unpadded rows give the
    same bits as single runs); serving leaves it off because with left padding FP8 rounding at bin
    edges makes batched outputs differ from single runs. `pacing` holds the
    test-only hooks (pacing.py). `overrides` sets scheduler limits (see the module's docstring).
    """
    import torch

    from pipeline.quant.loader import load_unified

    bundle = load_bundle(bundle_dir, verify=verify)
    if bundle.backend != "reference":
        raise CompatibilityError(f"{bundle_dir}: a {bundle.backend} bundle cannot be served by the reference runtime")
    rt = bundle.manifest["runtime"]
    options = scheduler_options(rt, overrides=overrides)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[rt.get("dtype", "float32")]
    model, tokenizer = load_unified(bundle_dir / rt["checkpoint"], dtype=dtype, activations=activations)
    return ReferenceRuntime(model, tokenizer, max_seq_len=max_seq_len or int(rt["max_seq_len"]), dtype=dtype,
                            pacing=pacing, max_batch_size=options["max_batch_size"],
                            max_num_tokens=options["max_num_tokens"], max_kv_tokens=options["max_kv_tokens"]).start()
