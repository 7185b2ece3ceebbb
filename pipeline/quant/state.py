"""The calibrated ModelOpt state, compact: what calibration added or changed, not the whole model.

`mto.save` stores the full state dict, so every unchanged weight is written again (538 MB for
SmolLM2-135M calibrated in fp32, hundreds of GB for a 70B model) only to be loaded over the same
weights of a freshly loaded source model. This file keeps `mto.save`'s layout
({"modelopt_state", "model_state_dict"}) but its state dict holds only

- tensors calibration added: the quantizer buffers (amax, pre_quant_scale, ...), and
- tensors calibration changed: AWQ and SmoothQuant fold their scales into linear weights,

found by comparing a byte digest of every tensor before and after calibration. `restore_state`
loads it onto a freshly loaded source model; the result equals what `mto.restore` of a full
`mto.save` gives (tests/integration/test_quant_state.py checks logits and exports).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pipeline.errors import QuantizeError
from pipeline.util import atomic

STATE_FILE = "modelopt_state.pth"
FORMAT = "trtbuild-compact-1"
_CHUNK_BYTES = 1 << 28  # a GPU tensor crosses to host in pieces of at most 256 MiB
META = b"meta"


def tensor_digest(t: Any) -> bytes:
    """blake2b of a tensor's bytes, dtype and shape: exact, unlike sums, which miss rearrangements."""
    import torch

    h = hashlib.blake2b(f"{t.dtype}{tuple(t.shape)}".encode(), digest_size=16)
    if t.device.type == "meta":  # offloaded by accelerate: no data here to compare
        return META
    flat = t.detach().reshape(-1)
    step = max(1, _CHUNK_BYTES // max(1, flat.element_size()))
    for i in range(0, flat.numel(), step):
        # as bytes: numpy has no bfloat16/float8, and the bit pattern is what must not change
        h.update(flat[i : i + step].cpu().contiguous().view(torch.uint8).numpy())
    return h.digest()


def state_digests(model: Any) -> dict[str, bytes]:
    """Digest of every tensor in the model's state dict, by key."""
    import torch

    return {k: tensor_digest(v) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def save_state(model: Any, path: Path, before: dict[str, bytes]) -> dict[str, int]:
    """Write (atomically) the ModelOpt state plus the tensors that differ from `before`.

    `before` is `state_digests` of the model as loaded, taken before calibration.
    """
    import modelopt.torch.opt as mto
    import torch

    sd = model.state_dict()
    keep: dict[str, Any] = {}
    changed = 0
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            keep[k] = v  # module extra state: small, and not ours to judge
        elif k not in before:
            keep[k] = v.detach().cpu()
        elif tensor_digest(v) != before[k]:
            keep[k] = v.detach().cpu()
            changed += 1
    offloaded = sum(1 for d in before.values() if d == META)
    if offloaded and changed:
        # AWQ-like calibration rescales weights; those of offloaded layers cannot be compared here
        raise QuantizeError(f"calibration changed {changed} weights and {offloaded} tensors are offloaded "
                            "(not compared); quantize on a host where the model fits in GPU memory")
    payload = {
        "modelopt_state": mto.modelopt_state(model),
        "model_state_dict": keep,
        # every key and shape of the calibrated model: restore_state checks the fresh model's
        "trtbuild": {"format": FORMAT, "shapes": _shapes(sd), "changed_weights": changed},
    }
    with atomic.open_write(path) as f:
        torch.save(payload, f)
    return {"tensors": len(keep), "changed_weights": changed, "bytes": path.stat().st_size}


def _shapes(sd: dict[str, Any]) -> dict[str, list[int] | None]:
    return {k: list(v.shape) if hasattr(v, "shape") else None for k, v in sd.items()}


def restore_state(model: Any, path: Path) -> Any:
    """Restore a state written by save_state onto a freshly loaded source model; returns the model."""
    import modelopt.torch.opt as mto
    import torch

    objs = torch.load(path, map_location="cpu", weights_only=True)
    meta = objs.get("trtbuild") if isinstance(objs, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise QuantizeError(f"{path} is not a {FORMAT} state file (written by another trtbuild version?); "
                            "re-run the quantize stage")
    try:
        model = mto.restore_from_modelopt_state(model, objs["modelopt_state"])
    except Exception as e:  # ModelOpt's ApplyModeError lists every extra quantizer: keep it short
        raise QuantizeError(f"{path}: the saved ModelOpt state does not fit this model ({type(e).__name__}: "
                            f"{str(e)[:160]}); the source checkpoint changed since calibration, re-run quantize") from e
    shapes, saved = _shapes(model.state_dict()), meta["shapes"]
    odd = sorted(k for k in shapes.keys() | saved.keys() if shapes.get(k) != saved.get(k))
    if odd:
        raise QuantizeError(f"{path}: the saved ModelOpt state does not fit this model ('{odd[0]}': "
                            f"{saved.get(odd[0])} saved, {shapes.get(odd[0])} here); the source checkpoint "
                            "changed since calibration, re-run quantize")
    # strict=False: the tensors left out are the source's own, already loaded and unchanged
    model.load_state_dict(objs["model_state_dict"], strict=False)
    return model
