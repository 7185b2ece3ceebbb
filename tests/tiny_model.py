"""A tiny Llama and tokenizer built offline and seeded, for tests that need a real model."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

VOCAB = 384


@cache
def _corpus() -> str:
    import pydoc_data.topics

    return "\n".join(list(pydoc_data.topics.topics.values())[:40])


def make_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_corpus()], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def make_model(seed: int = 0, layers: int = 2, hidden: int = 64, peaky: float = 1.0) -> Any:
    """A random Llama; `peaky` scales lm_head so predictions are confident (top-1 is then a stable metric)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    if peaky != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(peaky)
    return model


def save_tiny_checkpoint(out: Path, seed: int = 0, peaky: float = 1.0, hidden: int = 64) -> Path:
    make_model(seed, hidden=hidden, peaky=peaky).save_pretrained(out)
    make_tokenizer().save_pretrained(out)
    return out
