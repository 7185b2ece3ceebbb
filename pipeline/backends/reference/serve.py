"""Load a reference bundle into a ReferenceRuntime (used by the Triton model and the gates)."""

from __future__ import annotations

from pathlib import Path

from pipeline.backends.reference.pacing import StepPacing
from pipeline.backends.reference.runtime import ReferenceRuntime
from pipeline.bundle import load_bundle
from pipeline.errors import CompatibilityError


def load_runtime(bundle_dir: Path, *, verify: bool = True, activations: bool = False,
                 pacing: StepPacing | None = None) -> ReferenceRuntime:
    """Serve a reference bundle.

    `activations` fake-quantizes Linear inputs and K/V as an engine does (see quant.loader). The
    accuracy gate turns it on and batches only sequences of one length (unpadded rows give the
    same bits as single runs); serving leaves it off because with left padding FP8 rounding at bin
    edges makes batched outputs differ from single runs. `pacing` holds the
    test-only hooks (pacing.py).
    """
    import torch

    from pipeline.quant.loader import load_unified

    bundle = load_bundle(bundle_dir, verify=verify)
    if bundle.backend != "reference":
        raise CompatibilityError(f"{bundle_dir}: a {bundle.backend} bundle cannot be served by the reference runtime")
    rt = bundle.manifest["runtime"]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[rt.get("dtype", "float32")]
    model, tokenizer = load_unified(bundle_dir / rt["checkpoint"], dtype=dtype, activations=activations)
    return ReferenceRuntime(model, tokenizer, max_batch_size=int(rt["max_batch_size"]),
                            max_seq_len=int(rt["max_seq_len"]), dtype=dtype, pacing=pacing).start()
