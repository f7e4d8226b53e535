"""From texts to SAE latents: run the LM to the SAE's layer and encode every token.

Convention: a text's score for a feature is its maximum activation over tokens, skipping position 0:
the sink token the LM puts before every text (`lm.sink_token`: a huge norm, never seen in training).
Every word of the text counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from saelib.analysis.checks import check_texts, d_sae_of
from saelib.batching import text_activations


def hook_point(lm, sae) -> tuple[int, str]:
    """The (layer, site) the SAE was trained on, from its saved metadata."""
    meta = getattr(sae, "meta", None) or {}
    return lm.resolve(meta.get("layer"), meta.get("site", "resid"))


def max_over_tokens(latents: Tensor, skip_first: bool = True) -> Tensor:
    """[n_tokens, d_sae] -> [d_sae]; drops position 0 (the sink token) unless it is the only one."""
    if skip_first and latents.shape[0] > 1:
        latents = latents[1:]
    return latents.max(dim=0).values


@torch.inference_mode()
def encode_latents(sae, acts: Tensor) -> Tensor:
    """[n, d_in] activations -> [n, d_sae] float32 latents on the CPU (encoded on the SAE's device)."""
    device = sae.W_dec.device
    return sae.encode(acts.to(device=device, dtype=sae.W_dec.dtype)).float().cpu()


def text_maxima(
    lm, sae, texts: Sequence[str], batch_size: int = 32, max_length: int = 128, skip_first: bool = True
) -> Tensor:
    """[n_texts, d_sae] max-over-tokens latents for many texts, without keeping per-token latents."""
    texts = check_texts(texts)
    layer, site = hook_point(lm, sae)
    token_ids = lm.token_ids(texts, max_length)
    rows = torch.zeros(len(texts), d_sae_of(sae))
    for batch, text_acts in text_activations(lm, token_ids, layer, site, batch_size):
        lengths = [len(acts) for acts in text_acts]
        for i, text_latents in zip(batch, encode_latents(sae, torch.cat(text_acts)).split(lengths)):
            rows[i] = max_over_tokens(text_latents, skip_first)
    return rows
