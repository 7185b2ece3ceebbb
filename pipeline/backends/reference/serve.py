"""Load a reference bundle into a ReferenceRuntime (used by the Triton model and the gates)."""

from __future__ import annotations

from pathlib import Path

from pipeline.backends.reference.pacing import StepPacing
from pipeline.backends.reference.runtime import ReferenceRuntime
from pipeline.bundle import load_bundle
from pipeline.errors import CompatibilityError


def load_runtime(bundle_dir: Path, *, verify: bool = True, activations: bool = False,
                 pacing: StepPacing | None = None, limits: dict[str, int] | None = None) -> ReferenceRuntime:
    """Serve a reference bundle.

    `activations` fake-quantizes Linear inputs and K/V as an engine does (see quant.loader). The
    accuracy gate turns it on and batches only sequences of one length (unpadded rows give the
    same bits as single runs); serving leaves it off because with left padding FP8 rounding at bin
    edges makes batched outputs differ from single runs. `pacing` holds the
    test-only hooks (pacing.py). `limits` (a serving profile's max_batch_size, max_num_tokens)
    override the manifest's; a limit the runtime does not take yet is not passed.
    """
    import inspect

    import torch

    from pipeline.quant.loader import load_unified

    bundle = load_bundle(bundle_dir, verify=verify)
    if bundle.backend != "reference":
        raise CompatibilityError(f"{bundle_dir}: a {bundle.backend} bundle cannot be served by the reference runtime")
    rt = bundle.manifest["runtime"]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[rt.get("dtype", "float32")]
    model, tokenizer = load_unified(bundle_dir / rt["checkpoint"], dtype=dtype, activations=activations)
    limits = {**{k: int(rt[k]) for k in ("max_batch_size", "max_num_tokens") if rt.get(k)}, **(limits or {})}
    takes = inspect.signature(ReferenceRuntime).parameters
    kwargs = {k: v for k, v in limits.items() if k in takes}
    return ReferenceRuntime(model, tokenizer, max_seq_len=int(rt["max_seq_len"]), dtype=dtype, pacing=pacing,
                            **kwargs).start()
