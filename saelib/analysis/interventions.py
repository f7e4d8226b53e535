"""What a feature does to the LM's output: the logit lens reads its decoder direction through the
unembedding; steering adds the direction and ablation removes the feature's share while generating;
a steering sweep measures, for a few strengths, how likely the LM finds a concept's sentences after
a prompt, so the strength is chosen by measurement rather than by eye.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelib import corpus, html
from saelib.analysis.checks import check_feature, check_texts, d_sae_of
from saelib.analysis.encode import hook_point
from saelib.analysis.labels import ConceptLabels, feature_name, label_names
from saelib.batching import pad_batch
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
        up = ", ".join(html.printable_token(t) for t, _ in self.promoted)
        down = ", ".join(html.printable_token(t) for t, _ in self.suppressed)
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
NO_CHANGE = "The intervention changed nothing: the continuation is word for word the same."


@dataclass
class Steering:
    """Greedy continuations of one prompt without and with an intervention on one feature."""

    prompt: str
    intervention: str
    before: str
    after: str

    no_change = NO_CHANGE

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def __repr__(self) -> str:
        width = max(len("before"), len(self.intervention))
        lines = [
            f"{self.prompt!r}",
            f"  {'before':<{width}}  {self.before!r}",
            f"  {self.intervention:<{width}}  {self.after!r}",
        ]
        if not self.changed:
            lines.append(f"  {self.no_change}")
        return "\n".join(lines)

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


def steer(
    lm,
    sae,
    prompt: str,
    feature: int,
    alpha: float,
    max_new_tokens: int = 20,
    labels: ConceptLabels | dict[int, str] | None = None,
) -> Steering:
    """Generate with alpha * W_dec[feature] added at every position of the SAE's layer."""
    hook = steering_hook(sae, feature, alpha)
    name = feature_name(feature, label_names(labels))
    return _generate_pair(lm, sae, prompt, hook, f"{name} += {alpha:.3g}", max_new_tokens)


def ablate(
    lm,
    sae,
    prompt: str,
    feature: int,
    max_new_tokens: int = 20,
    labels: ConceptLabels | dict[int, str] | None = None,
) -> Steering:
    """Generate with one feature zeroed (its contribution subtracted) at every position."""
    hook = ablation_hook(sae, feature)
    name = feature_name(feature, label_names(labels))
    return _generate_pair(lm, sae, prompt, hook, f"{name} zeroed", max_new_tokens)


# ---- choosing the steering strength by measurement ----------------------------------------------
@dataclass
class SteeringSweep:
    """Mean log-probability per token of a concept's sentences after a prompt, per steering strength."""

    prompt: str
    name: str  # the feature and its concept, e.g. "f1037 (cooking_recipes)"
    concept: str
    n_texts: int
    alphas: list[float]
    logprobs: list[float]

    @property
    def best_alpha(self) -> float:
        """The strength under which the concept's sentences are most likely."""
        return self.alphas[int(np.argmax(self.logprobs))]

    @property
    def gain(self) -> float:
        """Log-prob per token gained at the best strength over no steering (alpha 0 must be swept)."""
        return max(self.logprobs) - self.logprobs[self.alphas.index(0.0)]

    def figure(self):
        from saelib import figures

        return figures.steering_sweep_figure(self)

    def __repr__(self) -> str:
        rows = "\n".join(f"  {a:>8.3g}  {lp:8.3f}" for a, lp in zip(self.alphas, self.logprobs))
        return (
            f"Steering sweep: {self.name} after {self.prompt!r}, log-prob per token of {self.n_texts} "
            f"held-out {self.concept} sentences\n     alpha  log-prob\n{rows}\n"
            f"  best alpha {self.best_alpha:.3g}"
        )

    def _repr_html_(self) -> str:
        return html.steering_sweep_html(self)


@torch.inference_mode()
def continuation_logprob(lm, prompt: str, texts: Sequence[str]) -> float:
    """Mean log-probability per token of each text as the continuation of `prompt` (hooks apply)."""
    prompt_ids = lm.token_ids(prompt, max_length=1024)[0]
    rows, spans = [], []
    for text in check_texts(list(texts)):
        ids = lm.tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]
        spans.append((len(prompt_ids), len(prompt_ids) + len(ids)))
        rows.append(prompt_ids + ids)
    input_ids, attention_mask = pad_batch(rows, lm.tokenizer.pad_token_id)
    logits = lm.logits(input_ids.to(lm.device), attention_mask.to(lm.device))
    logprobs = logits.log_softmax(dim=-1)
    total, count = 0.0, 0
    for row, (start, end) in enumerate(spans):
        targets = input_ids[row, start:end].to(logprobs.device)
        total += float(logprobs[row, start - 1 : end - 1].gather(1, targets[:, None]).sum())
        count += end - start
    return total / count


def steering_sweep(
    lm,
    sae,
    prompt: str,
    feature: int,
    concept: str,
    alphas: Sequence[float],
    n_texts: int = 8,
) -> SteeringSweep:
    """For each alpha, steer with the feature and measure how likely the LM finds the concept's held-out
    sentences after `prompt`. A feature that carries the concept raises that log-prob up to some strength;
    past it the residual stream is swamped and everything gets less likely. Include 0 (no steering)."""
    feature = check_feature(feature, d_sae_of(sae))
    alphas = [float(a) for a in alphas]
    if 0.0 not in alphas:
        raise BadArgument("alphas must include 0.0, the unsteered baseline the others are compared with")
    texts = [d.text for d in corpus.load_concepts("heldout") if d.concept == concept][:n_texts]
    if not texts:
        raise BadArgument(f"No held-out sentences for concept {concept!r} in {corpus.concepts_path()}")
    layer, site = hook_point(lm, sae)
    logprobs = []
    for alpha in alphas:
        with lm.hooked(layer, site, steering_hook(sae, feature, alpha)):
            logprobs.append(continuation_logprob(lm, prompt, texts))
    return SteeringSweep(
        prompt=prompt,
        name=f"f{feature} ({concept})",
        concept=concept,
        n_texts=len(texts),
        alphas=alphas,
        logprobs=logprobs,
    )
