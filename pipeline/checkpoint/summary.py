"""What a checkpoint is: architecture, size and parameter count, read from headers only."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from pipeline.util.hashing import iter_content_files

DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I8": 1,
               "I32": 4, "I64": 8}


def safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return dict(json.loads(f.read(n)))


def summarize(checkpoint_dir: Path) -> dict[str, Any]:
    cfg_path = checkpoint_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    params = 0
    dtypes: dict[str, int] = {}
    for st in sorted(checkpoint_dir.glob("*.safetensors")):
        for name, meta in safetensors_header(st).items():
            if name == "__metadata__":
                continue
            count = 1
            for d in meta["shape"]:
                count *= d
            params += count
            dtypes[meta["dtype"]] = dtypes.get(meta["dtype"], 0) + count
    text_cfg = cfg.get("text_config", cfg)
    return {
        "architecture": (cfg.get("architectures") or ["?"])[0], "model_type": cfg.get("model_type"),
        "parameters": params, "dtype": max(dtypes, key=lambda k: dtypes[k]) if dtypes else None,
        "size_bytes": sum(p.stat().st_size for p in iter_content_files(checkpoint_dir)),
        "layers": text_cfg.get("num_hidden_layers"), "hidden_size": text_cfg.get("hidden_size"),
        "heads": text_cfg.get("num_attention_heads"), "kv_heads": text_cfg.get("num_key_value_heads"),
        "vocab_size": text_cfg.get("vocab_size"),
    }
