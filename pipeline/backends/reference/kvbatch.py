"""The decode batch's KV cache: per-request caches joined into one left-padded batch, and left again.

In-flight batching needs rows that join and leave at every step. A request prefills alone (its own
DynamicCache, batch of one); once its prompt is in, its cache joins this batch: left-padded to the
batch's width (or the batch left-padded to it), with an attention mask row that hides the padding
and position ids that are the row's own token count, so each row sees exactly its own tokens at
its own positions. A finished row is dropped at once and columns that only hold padding are cut.

Why one padded batch rather than stacking per-request caches each step: HF's DynamicCache already
copies the whole cache on every append (torch.cat), so stacking would add a second and third copy
per step; joining copies the batch once per join and a leave is a slice. (Reasoned, not measured:
the stacking variant was not built.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name


class BatchKV:
    def __init__(self) -> None:
        self.cache: Any = None  # DynamicCache of the rows, or None when empty
        self.mask = torch.zeros((0, 0), dtype=torch.long)  # [rows, width]: 1 where a real token is
        self.lengths: list[int] = []  # real tokens per row (the next token's position)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def slots(self) -> int:
        """Token slots the cache holds, padding included (what memory it takes)."""
        return self.rows * self.width

    def add(self, cache: Any, length: int) -> None:
        """Append a prefilled request's cache (batch of one, `length` tokens) as the last row."""
        if self.cache is None:
            self.cache, self.mask, self.lengths = cache, torch.ones((1, length), dtype=torch.long), [length]
            return
        width = max(self.width, length)
        grow = width - self.width
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            # pad on the left of the sequence axis (dim -2): F.pad's pairs go last dim first
            mine.keys = torch.cat([_left_pad(mine.keys, grow), _left_pad(theirs.keys, width - length)])
            mine.values = torch.cat([_left_pad(mine.values, grow), _left_pad(theirs.values, width - length)])
        row = torch.zeros((1, width), dtype=torch.long)
        row[0, width - length:] = 1
        self.mask = torch.cat([F.pad(self.mask, (grow, 0)), row])
        self.lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order); free the others and the columns only padding fills."""
        if not rows:
            self.__init__()  # type: ignore[misc]  # back to empty: the cache is freed
            return
        if len(rows) == self.rows:
            return
        index = torch.tensor(rows)
        self.mask = self.mask[index]
        self.lengths = [self.lengths[r] for r in rows]
        cut = self.width - max(self.lengths)  # leading columns that no kept row uses
        self.mask = self.mask[:, cut:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, cut:]
            layer.values = layer.values[index, :, cut:]

    @torch.inference_mode()
    def decode(self, model: Any, tokens: list[int]) -> torch.Tensor:
        """One decode step: the next token of every row in; float32 logits [rows, vocab] out."""
        self.mask = torch.cat([self.mask, torch.ones((self.rows, 1), dtype=torch.long)], dim=1)
        positions = torch.tensor(self.lengths).unsqueeze(1)
        out = model(input_ids=torch.tensor(tokens).unsqueeze(1), attention_mask=self.mask, position_ids=positions,
                    past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.lengths = [n + 1 for n in self.lengths]
        return out.logits[:, -1, :].to(torch.float32)


def _left_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return F.pad(x, (0, 0, n, 0)) if n else x
