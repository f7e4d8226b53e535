"""Token id lists into right-padded batches, sorted by length so that little compute goes to padding,
and the per-text activations an LM gives on them.

Short and long texts in one batch pad every row to the longest: on the evaluation texts (5 to 64
tokens) that doubled the LM's work. Sorting the texts by length first keeps each batch's rows alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded input_ids [n, longest] and the attention mask marking real tokens."""
    input_ids = torch.full((len(rows), max(len(row) for row in rows)), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def padded_batches(
    input_ids: list[list[int]], docs: Iterable[int], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """Yield (doc indices, ids, mask) with documents sorted by length so padding stays small."""
    order = sorted(docs, key=lambda i: len(input_ids[i]))
    for b in range(0, len(order), batch_size):
        batch_docs = order[b : b + batch_size]
        yield batch_docs, *pad_batch([input_ids[i] for i in batch_docs], pad_id)


def text_activations(
    lm, token_ids: list[list[int]], layer: int, site: str, batch_size: int
) -> Iterator[tuple[list[int], list[Tensor]]]:
    """Batch by batch, texts in order of length: (text indices, each text's activations [n_tokens_i,
    d_model] at (layer, site) on the LM's device, sink token first, no padding)."""
    pad_id = lm.tokenizer.pad_token_id
    for texts, ids, mask in padded_batches(token_ids, range(len(token_ids)), batch_size, pad_id):
        acts = lm.forward_to(ids.to(lm.device), mask.to(lm.device), layer, site)
        yield texts, [acts[row, : len(token_ids[i])] for row, i in enumerate(texts)]
