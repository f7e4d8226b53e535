"""Input checks shared by the analysis views, the explorer and the dashboard: each names the fix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from saelib.errors import BadArgument


def d_sae_of(sae) -> int:
    """Number of SAE features (rows of the decoder)."""
    return int(sae.W_dec.shape[0])


def check_feature(feature: int, d_sae: int) -> int:
    if (
        isinstance(feature, bool)
        or not isinstance(feature, (int, np.integer))
        or not 0 <= int(feature) < d_sae
    ):
        raise BadArgument(f"feature {feature!r} is out of range: this SAE has features 0..{d_sae - 1}")
    return int(feature)


def check_threshold(threshold: float) -> float:
    if not np.isfinite(threshold) or threshold < 0:
        raise BadArgument(
            f"threshold must be a finite number >= 0 (latents are non-negative), got {threshold!r}"
        )
    return float(threshold)


def check_top_k(top_k: int, d_sae: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= d_sae:
        raise BadArgument(f"top_k must be an integer in 1..{d_sae} (the SAE's d_sae), got {top_k!r}")
    return int(top_k)


def check_texts(texts: Sequence[str] | str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise BadArgument("Empty text: pass one or more non-empty strings")
    return texts


def check_density(density, d_sae: int) -> Tensor:
    density = torch.as_tensor(density, dtype=torch.float32)
    if density.shape != (d_sae,) or not torch.isfinite(density).all() or (density < 0).any():
        raise BadArgument(
            f"density must hold one firing frequency in [0, 1] per latent ({d_sae}), e.g. "
            "metrics['feature_density'] or feature_stats(...).density"
        )
    return density
