"""What a feature does to the LM's output: the logit lens reads its decoder direction through the
unembedding; steering adds the direction and ablation removes the feature's share while generating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelib import html
from saelib.analysis.checks import check_feature, check_texts, d_sae_of
from saelib.analysis.encode import hook_point
from saelib.errors import BadArgument


# ---- logit lens ----------------------------------------------------------------------------------
def final_norm_weight(lm) -> Tensor | None:
    """The final norm's scale (what multiplies the residual before the unembedding), if any."""
    base = lm.model.base_model
    for name in ("norm", "final_layer_norm", "ln_f", "final_norm"):
        norm = getattr(base, name, None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            weight = norm.weight.detach().float()
            return 1.0 + weight if "Gemma" in type(norm).__name__ else weight  # Gemma stores w - 1
    return None


@dataclass
class LogitLens:
    """Tokens whose logits the feature's decoder direction raises and lowers most."""

    feature: int
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]

    def __repr__(self) -> str:
        up = ", ".join(repr(t) for t, _ in self.promoted)
        down = ", ".join(repr(t) for t, _ in self.suppressed)
        return f"f{self.feature} logit lens\n  promotes:  {up}\n  suppresses: {down}"

    def _repr_html_(self) -> str:
        return html.logit_lens_html(self)


@torch.inference_mode()
def logit_lens(lm, sae, feature: int, k: int = 10, through_final_norm: bool = True) -> LogitLens | None:
    """unembed @ W_dec[feature] (scaled by the final norm's weight): None if the LM has no unembedding."""
    feature = check_feature(feature, d_sae_of(sae))
    unembed = lm.unembed()
    if unembed is None:
        return None
    if not 1 <= k <= unembed.shape[0]:
        raise BadArgument(f"k must be in 1..{unembed.shape[0]} (vocabulary size), got {k}")
    direction = sae.W_dec[feature].detach().float().to(unembed.device)
    weight = final_norm_weight(lm) if through_final_norm else None
    if weight is not None:
        direction = direction * weight.to(direction.device)
    scores = unembed.float() @ direction
    top, bottom = scores.topk(k), (-scores).topk(k)
    names = lm.token_strings
    return LogitLens(
        feature=feature,
        promoted=list(zip(names(top.indices.tolist()), top.values.tolist())),
        suppressed=list(zip(names(bottom.indices.tolist()), (-bottom.values).tolist())),
    )


# ---- steering and ablation -------------------------------------------------------------------------
@dataclass
class Steering:
    """Greedy continuations of one prompt without and with an intervention on one feature."""

    prompt: str
    intervention: str
    before: str
    after: str

    def __repr__(self) -> str:
        return f"{self.prompt!r}\n  before: {self.before!r}\n  {self.intervention}: {self.after!r}"

    def _repr_html_(self) -> str:
        return html.steering_html(self)


def steering_hook(sae, feature: int, alpha: float):
    """acts -> acts + alpha * W_dec[feature] (alpha in latent units: "as if the feature fired at alpha")."""
    feature = check_feature(feature, d_sae_of(sae))
    if not np.isfinite(alpha):
        raise BadArgument(f"alpha must be a finite number, got {alpha!r}")
    direction = sae.W_dec[feature].detach().float()

    def add(acts: Tensor) -> Tensor:
        return acts + alpha * direction.to(acts.device, acts.dtype)

    return add


def ablation_hook(sae, feature: int):
    """acts -> acts - latents[feature] * W_dec[feature]: the activation without that feature's share."""
    feature = check_feature(feature, d_sae_of(sae))
    direction = sae.W_dec[feature].detach()

    def remove(acts: Tensor) -> Tensor:
        with torch.no_grad():
            latent = sae.encode(acts.to(direction.device, direction.dtype))[..., feature : feature + 1]
        return acts - (latent * direction).to(acts.device, acts.dtype)

    return remove


def _generate_pair(lm, sae, prompt: str, hook, intervention: str, max_new_tokens: int) -> Steering:
    check_texts([prompt])
    layer, site = hook_point(lm, sae)
    before = lm.generate(prompt, max_new_tokens=max_new_tokens)
    with lm.hooked(layer, site, hook):
        after = lm.generate(prompt, max_new_tokens=max_new_tokens)
    return Steering(prompt=prompt, intervention=intervention, before=before, after=after)


def steer(lm, sae, prompt: str, feature: int, alpha: float, max_new_tokens: int = 20) -> Steering:
    """Generate with alpha * W_dec[feature] added at every position of the SAE's layer."""
    hook = steering_hook(sae, feature, alpha)
    return _generate_pair(lm, sae, prompt, hook, f"f{feature} += {alpha:g}", max_new_tokens)


def ablate(lm, sae, prompt: str, feature: int, max_new_tokens: int = 20) -> Steering:
    """Generate with one feature zeroed (its contribution subtracted) at every position."""
    hook = ablation_hook(sae, feature)
    return _generate_pair(lm, sae, prompt, hook, f"f{feature} zeroed", max_new_tokens)
