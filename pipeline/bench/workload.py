"""Workload prompts with stated token lengths, from offline text.

`unique`: every prompt different, `input_len` tokens. `shared-prefix`: `prefixes` shared
prefixes of `prefix_len` tokens, each followed by a unique suffix (the traffic where prefix
caching matters). Lengths are in the tokenizer of the model under test; the decode/re-encode
round trip may move a prompt by a token or two, which the report states.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prompts:
    texts: list[str]
    input_tokens: list[int]


def _corpus_ids(tokenizer: Any) -> list[int]:
    from pipeline.eval.textset import pydoc_text

    text = pydoc_text()
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_prompts(tokenizer: Any, *, kind: str, num_prompts: int, input_len: int, prefixes: int = 4,
                 prefix_len: int = 0, seed: int = 0) -> Prompts:
    ids = _corpus_ids(tokenizer)
    rng = random.Random(seed)  # noqa: S311 - workload sampling, not cryptography

    def span(n: int) -> list[int]:
        start = rng.randrange(0, len(ids) - n)
        return ids[start:start + n]

    texts: list[str] = []
    if kind == "unique":
        texts = [tokenizer.decode(span(input_len)) for _ in range(num_prompts)]
    elif kind == "shared-prefix":
        heads = [span(prefix_len) for _ in range(prefixes)]
        texts = [tokenizer.decode(heads[i % prefixes] + span(input_len - prefix_len)) for i in range(num_prompts)]
    else:
        raise ValueError(f"unknown workload kind '{kind}'")
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return Prompts(texts, lengths)


class WordTokenizer:
    """Whitespace words as tokens, for benchmarks run without the model's tokenizer.

    The prompts are real text of about `input_len` words; a model's tokenizer makes that some
    1.3x more tokens. Output lengths are unaffected (the server counts them).
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._words: list[str] = []

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = []
        for w in text.split():
            if w not in self._ids:
                self._ids[w] = len(self._words)
                self._words.append(w)
            ids.append(self._ids[w])
        return {"input_ids": ids}

    def decode(self, ids: list[int]) -> str:
        return " ".join(self._words[i] for i in ids)
