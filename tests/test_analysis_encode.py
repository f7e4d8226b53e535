"""From texts to latents: batched maxima equal one-by-one encoding; the layer comes from SAE metadata."""

from __future__ import annotations

import torch
from conftest import random_sae

from saelib import analysis


def test_text_maxima_batches_by_length_but_keeps_order(tiny_llama, text_sae):
    sae = text_sae
    texts = [
        "A much longer sentence about dogs, cats and a major city.",
        "Short one.",
        "Neural networks process information.",
        "Mid length text.",
    ]
    batched = analysis.text_maxima(tiny_llama, sae, texts, batch_size=2)
    one_by_one = torch.stack([analysis.encode_texts(tiny_llama, sae, [t]).text_max[0] for t in texts])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_hook_point_and_max_over_tokens(tiny_llama):
    sae = random_sae("relu", tiny_llama.d_model, 8, layer=2, site="resid")
    assert analysis.hook_point(tiny_llama, sae) == (2, "resid")
    latents = torch.tensor([[9.0, 0.0], [1.0, 2.0], [3.0, 1.0]])
    assert analysis.max_over_tokens(latents).tolist() == [3.0, 2.0]  # the first token (sink) is left out
    assert analysis.max_over_tokens(latents, skip_first=False).tolist() == [9.0, 2.0]
    assert analysis.max_over_tokens(latents[:1]).tolist() == [9.0, 0.0]  # unless it is the only one
