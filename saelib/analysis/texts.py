"""Which features fire on a few texts: top features per text, active fraction, overlap between
texts, token heatmaps, coloured text and phrase search.

The LM runs once, in `encode_texts`; every view reads the cached `TextActivations`, so notebooks
and the explorer redraw without touching the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from saelib import corpus, html
from saelib.analysis.checks import check_density, check_feature, check_texts, check_threshold, check_top_k
from saelib.analysis.encode import encode_latents, hook_point, max_over_tokens
from saelib.analysis.labels import ConceptLabels, feature_name, label_names
from saelib.errors import BadArgument


@dataclass
class TextActivations:
    """Per-token SAE latents of a few texts, computed once; every per-text view reads these."""

    texts: list[str]
    tokens: list[list[str]]  # decoded tokens, the sink token first
    latents: list[Tensor]  # [n_tokens_i, d_sae] float32 each, the sink token's row first
    skip_first: bool = True
    text_max: Tensor = field(init=False)  # [n_texts, d_sae] max over tokens

    def __post_init__(self):
        self.text_max = torch.stack([max_over_tokens(lat, self.skip_first) for lat in self.latents])

    @property
    def d_sae(self) -> int:
        return self.text_max.shape[1]

    def scored(self, text: int) -> tuple[list[str], Tensor]:
        """Tokens and latents of one text that count for its scores (first token dropped if skipped)."""
        start = 1 if self.skip_first and len(self.tokens[text]) > 1 else 0
        return self.tokens[text][start:], self.latents[text][start:]

    def feature_values(self, feature: int) -> list[tuple[list[str], np.ndarray]]:
        """Per text, its scored tokens and one feature's activation on each."""
        scored = [self.scored(i) for i in range(len(self.texts))]
        return [(tokens, latents[:, feature].numpy()) for tokens, latents in scored]

    def __repr__(self) -> str:
        n_tokens = sum(len(t) for t in self.tokens)
        return f"TextActivations({len(self.texts)} texts, {n_tokens} tokens, d_sae {self.d_sae})"


def encode_texts(
    lm, sae, texts: Sequence[str] | str | None = None, max_length: int = 128, skip_first: bool = True
) -> TextActivations:
    """Run the LM to the SAE's layer and encode every token; defaults to the starter sentences."""
    texts = check_texts(corpus.STARTER_SENTENCES if texts is None else texts)
    layer, site = hook_point(lm, sae)
    token_acts = lm.activations(texts, layer=layer, site=site, max_length=max_length)
    latents = [encode_latents(sae, acts) for acts in token_acts.acts]
    return TextActivations(texts=texts, tokens=token_acts.tokens, latents=latents, skip_first=skip_first)


# ---- top features per text ----------------------------------------------------------------------
@dataclass
class TopFeatures:
    """The strongest features of each text above a threshold, and how many latents are active."""

    texts: list[str]
    threshold: float
    top_k: int
    d_sae: int
    features: list[list[int]]  # per text, strongest first, only those above threshold
    values: list[list[float]]  # max activation over the text's tokens
    scores: list[list[float]]  # what the order is by: `values`, or values x log(1/density)
    n_active: list[int]  # per text: features whose max activation exceeds threshold
    labels: dict[int, str] = field(default_factory=dict)  # feature -> concept name, for display
    ranking: str = "max activation"

    @property
    def active_fraction(self) -> list[float]:
        return [n / self.d_sae for n in self.n_active]

    @property
    def settings(self) -> str:
        return f"threshold {self.threshold:g}, top_k {self.top_k}, ranked by {self.ranking}"

    def name(self, feature: int) -> str:
        return feature_name(feature, self.labels)

    def summary(self, i: int) -> str:
        return (
            f"{self.n_active[i]} of {self.d_sae} latents active ({100 * self.active_fraction[i]:.2f}%), "
            f"{len(self.features[i])} listed"
        )

    def __repr__(self) -> str:
        lines = [f"Top features ({self.settings})"]
        for i, text in enumerate(self.texts):
            lines.append(f"{text!r}: {self.summary(i)}")
            lines += [f"    {self.name(f)}  {s:.3f}" for f, s in zip(self.features[i], self.scores[i])]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return html.top_features_html(self)


def top_features(
    acts: TextActivations,
    threshold: float = 0.0,
    top_k: int = 10,
    labels: ConceptLabels | dict[int, str] | None = None,
    density=None,
) -> TopFeatures:
    """Per text: up to `top_k` features whose max activation exceeds `threshold`, strongest first.

    With `density` (each latent's firing frequency over the corpus), features are ranked by
    activation x log(1/density) instead, as TF-IDF ranks words: a feature that fires on one token in
    ten (a position, a full stop) yields to one that fires rarely, i.e. to what is specific to this text.
    """
    threshold = check_threshold(threshold)
    top_k = check_top_k(top_k, acts.d_sae)
    scores, ranking = acts.text_max, "max activation"
    if density is not None:
        density = check_density(density, acts.d_sae)
        # a latent never seen firing counts as rare as the rarest one seen
        floor = density[density > 0].min() if (density > 0).any() else 1.0
        rarity = -torch.log(density.clamp(floor, 1.0))
        scores, ranking = scores * rarity, "max activation x log(1/density)"
    ranked, indices = scores.topk(top_k, dim=1)
    values = acts.text_max.gather(1, indices)
    keep = values > threshold
    return TopFeatures(
        texts=acts.texts,
        threshold=threshold,
        top_k=top_k,
        d_sae=acts.d_sae,
        features=[indices[i][keep[i]].tolist() for i in range(len(acts.texts))],
        values=[values[i][keep[i]].tolist() for i in range(len(acts.texts))],
        scores=[ranked[i][keep[i]].tolist() for i in range(len(acts.texts))],
        n_active=(acts.text_max > threshold).sum(dim=1).tolist(),
        labels=label_names(labels),
        ranking=ranking,
    )


def search_features(
    lm, sae, phrase: str, top_k: int = 10, labels: ConceptLabels | dict[int, str] | None = None, density=None
) -> TopFeatures:
    """The features most active on `phrase` (max over its tokens); with `density`, ranked by specificity
    as in `top_features`."""
    return top_features(encode_texts(lm, sae, [phrase]), 0.0, top_k, labels, density)


def active_fraction(acts: TextActivations, threshold: float = 0.0) -> Tensor:
    """[n_texts] fraction of all latents whose max activation on the text exceeds `threshold`."""
    threshold = check_threshold(threshold)
    return (acts.text_max > threshold).float().mean(dim=1)


def shared_counts(acts: TextActivations, top_k: int = 10, threshold: float = 0.0, density=None) -> Tensor:
    """[n_texts, n_texts] how many features two texts' top-k sets share (diagonal: set sizes)."""
    sets = [set(f) for f in top_features(acts, threshold, top_k, density=density).features]
    return torch.tensor([[len(a & b) for b in sets] for a in sets])


def show_overlap(acts: TextActivations, top_k: int = 10, threshold: float = 0.0, density=None):
    """Heatmap of `shared_counts`; the title gives the most features any two texts share."""
    from saelib import figures

    shared = shared_counts(acts, top_k, threshold, density)
    most = int(shared.triu(1).max()) if len(acts.texts) > 1 else 0
    title = f"Features shared by two top-{top_k} sets (at most {most})"
    return figures.overlap_figure(shared, acts.texts, vmax=top_k, title=title)


# ---- tokens coloured by activation -------------------------------------------------------------
def token_heatmap(
    acts: TextActivations,
    text: int = 0,
    features: Sequence[int] | None = None,
    top_k: int = 8,
    labels: ConceptLabels | dict[int, str] | None = None,
):
    """Tokens × features table for one text; by default the text's `top_k` strongest features."""
    if not 0 <= text < len(acts.texts):
        raise BadArgument(f"text index {text} is out of range: there are {len(acts.texts)} texts")
    if features is None:
        features = top_features(acts, 0.0, min(top_k, acts.d_sae)).features[text]
    features = [check_feature(f, acts.d_sae) for f in features]
    tokens, latents = acts.scored(text)
    return html.as_html(
        html.heatmap_html(tokens, features, latents[:, features].numpy(), label_names(labels))
    )


def color_text(acts: TextActivations, feature: int):
    """Every text with its tokens shaded by one feature's activation (one colour scale for all)."""
    feature = check_feature(feature, acts.d_sae)
    return html.as_html(html.coloured_texts_html(acts.feature_values(feature), f"f{feature}"))
