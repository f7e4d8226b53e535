"""What a trained SAE's features do: per-text top features, per-feature statistics from the
activation store, logit lens, concept labels, search and steering.

Everything expensive (running the LM, encoding a store) happens once and is kept in a small
object (`TextActivations`, `FeatureStats`); the views below read those, so notebooks and
widgets can redraw without touching the model.

Convention: a text's score for a feature is its maximum activation over tokens, skipping the
first token (the attention sink has a huge norm and the SAE never saw it in training).
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from . import feature_plots

HIST_EDGES = torch.logspace(-4, 4, 65)  # log-spaced bins for activation histograms (8 per decade)


# ---- input checks ------------------------------------------------------------------------
def d_sae_of(sae) -> int:
    """Number of SAE features (rows of the decoder)."""
    return int(sae.W_dec.shape[0])


def check_feature(feature: int, d_sae: int) -> int:
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= int(feature) < d_sae:
        raise ValueError(f"feature {feature!r} is out of range: this SAE has features 0..{d_sae - 1}")
    return int(feature)


def check_threshold(threshold: float) -> float:
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0 (latents are non-negative), got {threshold!r}")
    return float(threshold)


def check_top_k(top_k: int, d_sae: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= d_sae:
        raise ValueError(f"top_k must be an integer in 1..{d_sae} (the SAE's d_sae), got {top_k!r}")
    return int(top_k)


def check_texts(texts: Sequence[str] | str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError("Empty text: pass one or more non-empty strings")
    return texts


# ---- encoding texts once ----------------------------------------------------------------
def hook_point(lm, sae) -> tuple[int, str]:
    """The (layer, site) the SAE was trained on, from its saved metadata."""
    meta = getattr(sae, "meta", None) or {}
    site = meta.get("site", "resid")
    return lm.resolve(meta.get("layer"), site), site


def max_over_tokens(latents: Tensor, skip_first: bool = True) -> Tensor:
    """[n_tokens, d_sae] -> [d_sae]; drops the first token unless it is the only one."""
    if skip_first and latents.shape[0] > 1:
        latents = latents[1:]
    return latents.max(dim=0).values


@torch.inference_mode()
def _encode(sae, acts: Tensor) -> Tensor:
    device = sae.W_dec.device
    return sae.encode(acts.to(device=device, dtype=sae.W_dec.dtype)).float().cpu()


@dataclass
class TextActivations:
    """Per-token SAE latents of a few texts, computed once; every per-text view reads these."""

    texts: list[str]
    tokens: list[list[str]]  # decoded tokens, first token included
    latents: list[Tensor]  # [n_tokens_i, d_sae] float32 each, first token included
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

    def __repr__(self) -> str:
        n_tokens = sum(len(t) for t in self.tokens)
        return f"TextActivations({len(self.texts)} texts, {n_tokens} tokens, d_sae {self.d_sae})"


def encode_texts(lm, sae, texts: Sequence[str] | str | None = None, max_length: int = 128,
                 skip_first: bool = True) -> TextActivations:
    """Run the LM to the SAE's layer and encode every token; defaults to the starter sentences."""
    if texts is None:
        from .corpus import STARTER_SENTENCES

        texts = STARTER_SENTENCES
    texts = check_texts(texts)
    layer, site = hook_point(lm, sae)
    token_acts = lm.activations(texts, layer=layer, site=site, max_length=max_length)
    latents = [_encode(sae, acts) for acts in token_acts.acts]
    return TextActivations(texts=texts, tokens=token_acts.tokens, latents=latents, skip_first=skip_first)


def text_maxima(lm, sae, texts: Sequence[str], batch_size: int = 32, max_length: int = 128,
                skip_first: bool = True) -> Tensor:
    """[n_texts, d_sae] max-over-tokens latents for many texts, without keeping per-token latents."""
    texts = check_texts(texts)
    layer, site = hook_point(lm, sae)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
    rows = torch.zeros(len(texts), d_sae_of(sae))
    for start in range(0, len(texts), batch_size):
        batch = order[start:start + batch_size]
        token_acts = lm.activations([texts[i] for i in batch], layer=layer, site=site, max_length=max_length)
        latents = _encode(sae, torch.cat(token_acts.acts)).split([len(a) for a in token_acts.acts])
        for i, text_latents in zip(batch, latents):
            rows[i] = max_over_tokens(text_latents, skip_first)
    return rows


# ---- top features per text ----------------------------------------------------------------
def label_names(labels: ConceptLabels | dict[int, str] | None) -> dict[int, str]:
    """feature -> name from a `ConceptLabels` table, a plain dict, or nothing."""
    return dict(getattr(labels, "feature_labels", labels) or {})


def feature_name(feature: int, names: dict[int, str] | None) -> str:
    return f"f{feature}" + (f" ({names[feature]})" if names and feature in names else "")


@dataclass
class TopFeatures:
    """The strongest features of each text above a threshold, and how many latents are active."""

    texts: list[str]
    threshold: float
    top_k: int
    d_sae: int
    features: list[list[int]]  # per text, strongest first, only those above threshold
    values: list[list[float]]
    n_active: list[int]  # per text: features whose max activation exceeds threshold
    labels: dict[int, str] = field(default_factory=dict)  # feature -> concept name, for display
    ranking: str = "max activation"

    @property
    def active_fraction(self) -> list[float]:
        return [n / self.d_sae for n in self.n_active]

    def summary(self, i: int) -> str:
        return (f"{self.n_active[i]} of {self.d_sae} latents active ({100 * self.active_fraction[i]:.2f}%), "
                f"{len(self.features[i])} listed")

    def __repr__(self) -> str:
        lines = [f"Top features (threshold {self.threshold:g}, top_k {self.top_k}, ranked by {self.ranking})"]
        for i, text in enumerate(self.texts):
            lines.append(f"{text!r}: {self.summary(i)}")
            lines += [f"    {feature_name(f, self.labels)}  {v:.3f}" for f, v in zip(self.features[i], self.values[i])]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [f"<b>Top features</b> (threshold {self.threshold:g}, top_k {self.top_k}, ranked by {self.ranking})"]
        for i, text in enumerate(self.texts):
            chips = " ".join(
                f'<span style="display:inline-block;margin:1px 3px;padding:0 4px;border:1px solid #ccc;'
                f'border-radius:3px">{html.escape(feature_name(f, self.labels))} <b>{v:.2f}</b></span>'
                for f, v in zip(self.features[i], self.values[i])
            ) or "<i>none above threshold</i>"
            parts.append(f'<div style="margin:6px 0"><code>{html.escape(text)}</code><br>'
                         f'<span class="saelib-active">{self.summary(i)}</span><br>{chips}</div>')
        return "".join(parts)


def check_density(density, d_sae: int) -> Tensor:
    density = torch.as_tensor(density, dtype=torch.float32)
    if density.shape != (d_sae,) or not torch.isfinite(density).all() or (density < 0).any():
        raise ValueError(f"density must hold one firing frequency in [0, 1] per latent ({d_sae}), e.g. "
                         "metrics['feature_density'] or feature_stats(...).density")
    return density


def top_features(acts: TextActivations, threshold: float = 0.0, top_k: int = 10,
                 labels: ConceptLabels | dict[int, str] | None = None, density=None) -> TopFeatures:
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
        floor = density[density > 0].min() if (density > 0).any() else 1.0  # never seen firing: as rare as the rarest
        rarity = -torch.log(density.clamp(floor, 1.0))
        scores, ranking = scores * rarity, "max activation x log(1/density)"
    indices = scores.topk(top_k, dim=1).indices
    values = acts.text_max.gather(1, indices)
    keep = values > threshold
    return TopFeatures(
        texts=acts.texts, threshold=threshold, top_k=top_k, d_sae=acts.d_sae,
        features=[indices[i][keep[i]].tolist() for i in range(len(acts.texts))],
        values=[values[i][keep[i]].tolist() for i in range(len(acts.texts))],
        n_active=(acts.text_max > threshold).sum(dim=1).tolist(),
        labels=label_names(labels), ranking=ranking,
    )


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
    shared = shared_counts(acts, top_k, threshold, density)
    most = int(shared.triu(1).max()) if len(acts.texts) > 1 else 0
    return feature_plots.overlap_figure(shared, acts.texts, vmax=top_k,
                                        title=f"Features shared by two top-{top_k} sets (at most {most})")


def _html(markup: str):
    from IPython.display import HTML

    return HTML(markup)


def token_heatmap(acts: TextActivations, text: int = 0, features: Sequence[int] | None = None, top_k: int = 8,
                  labels: ConceptLabels | dict[int, str] | None = None):
    """Tokens × features table for one text; by default the text's `top_k` strongest features."""
    if not 0 <= text < len(acts.texts):
        raise ValueError(f"text index {text} is out of range: there are {len(acts.texts)} texts")
    if features is None:
        features = top_features(acts, 0.0, min(top_k, acts.d_sae)).features[text]
    features = [check_feature(f, acts.d_sae) for f in features]
    tokens, latents = acts.scored(text)
    return _html(feature_plots.heatmap_html(tokens, features, latents[:, features].numpy(), label_names(labels)))


def color_text(acts: TextActivations, feature: int):
    """Every text with its tokens shaded by one feature's activation (one colour scale for all)."""
    return _html(coloured_texts_html(acts, check_feature(feature, acts.d_sae)))


def coloured_texts_html(acts: TextActivations, feature: int, name: str | None = None) -> str:
    """HTML for `color_text` (also drawn by the explorer); one colour scale across the texts."""
    scored = [acts.scored(i) for i in range(len(acts.texts))]
    vmax = max(float(latents[:, feature].max()) for _, latents in scored)
    lines = [feature_plots.tokens_html(tokens, latents[:, feature].numpy(), vmax) for tokens, latents in scored]
    return f"<b>{html.escape(name or f'f{feature}')}</b> on each text (max {vmax:.3g})<br>" + "<br>".join(lines)


# ---- per-feature statistics streamed over the store ----------------------------------------
@dataclass
class FeatureStats:
    """One pass over the activation store: density, histogram and top-n rows of every feature."""

    n_tokens: int
    density: Tensor  # [d_sae] fraction of tokens where the feature is > 0
    mean_active: Tensor  # [d_sae] mean activation when active
    max_act: Tensor  # [d_sae]
    hist_counts: Tensor  # [d_sae, n_bins] counts of nonzero activations on HIST_EDGES
    top_values: Tensor  # [n_top, d_sae] descending
    top_rows: Tensor  # [n_top, d_sae] global store rows of those values
    top_token_ids: Tensor  # [n_top, d_sae] token at those rows

    @property
    def d_sae(self) -> int:
        return self.density.shape[0]

    def __repr__(self) -> str:
        dead = int((self.density == 0).sum())
        return f"FeatureStats({self.n_tokens} tokens, d_sae {self.d_sae}, {dead} never fired)"

    def histogram(self, feature: int):
        """Figure: distribution of the feature's nonzero activations."""
        feature = check_feature(feature, self.d_sae)
        return feature_plots.histogram_figure(
            HIST_EDGES.numpy(), self.hist_counts[feature].numpy(),
            title=f"f{feature}: density {self.density[feature]:.2e}, max {self.max_act[feature]:.3g}",
        )

    def density_plot(self, features: Sequence[int] = ()):
        """Figure: log firing density of all features, chosen ones marked."""
        marked = {check_feature(f, self.d_sae): float(self.density[f]) for f in features}
        return feature_plots.density_figure(self.density.numpy(), marked)


@torch.inference_mode()
def feature_stats(sae, store, n_top: int = 20, max_tokens: int | None = None, batch_tokens: int = 2048,
                  progress: bool = True) -> FeatureStats:
    """Encode the store shard by shard, keeping running top-`n_top` rows per feature (bounded memory)."""
    from tqdm.auto import tqdm

    if n_top < 1 or batch_tokens < 1:
        raise ValueError("n_top and batch_tokens must be >= 1")
    d_sae, n_bins = d_sae_of(sae), len(HIST_EDGES) - 1
    total = store.n_tokens if max_tokens is None else min(max_tokens, store.n_tokens)
    fired = torch.zeros(d_sae, dtype=torch.int64)
    act_sum = torch.zeros(d_sae, dtype=torch.float64)
    max_act = torch.zeros(d_sae)
    hist = torch.zeros(d_sae * n_bins, dtype=torch.int64)
    top_values = torch.zeros(n_top, d_sae)
    top_rows = torch.full((n_top, d_sae), -1, dtype=torch.int64)
    top_ids = torch.zeros(n_top, d_sae, dtype=torch.int64)
    seen = 0
    bar = tqdm(total=total, desc="feature stats", unit="tok", disable=not progress)
    for shard in store.shards():
        for start in range(0, len(shard.acts), batch_tokens):
            if seen >= total:
                break
            stop = min(start + batch_tokens, len(shard.acts), start + total - seen)
            latents = _encode(sae, shard.acts[start:stop])
            active = latents > 0
            fired += active.sum(0)
            act_sum += latents.sum(0, dtype=torch.float64)
            max_act = torch.maximum(max_act, latents.max(0).values)
            rows, feats = active.nonzero(as_tuple=True)
            bins = (torch.bucketize(latents[rows, feats], HIST_EDGES) - 1).clamp(0, n_bins - 1)
            hist += torch.bincount(feats * n_bins + bins, minlength=d_sae * n_bins)
            chunk_values, chunk_index = latents.topk(min(n_top, len(latents)), dim=0)
            values = torch.cat([top_values, chunk_values])
            top_values, pick = values.topk(n_top, dim=0)
            top_rows = torch.cat([top_rows, chunk_index + shard.offset + start]).gather(0, pick)
            top_ids = torch.cat([top_ids, shard.token_ids[start:stop][chunk_index]]).gather(0, pick)
            seen += len(latents)
            bar.update(len(latents))
    bar.close()
    if seen == 0:
        raise ValueError("The store has no tokens: collect activations first")
    return FeatureStats(
        n_tokens=seen, density=fired.float() / seen,
        mean_active=(act_sum / fired.clamp(min=1)).float(), max_act=max_act,
        hist_counts=hist.view(d_sae, n_bins), top_values=top_values, top_rows=top_rows, top_token_ids=top_ids,
    )


@dataclass
class Context:
    """A window of a stored document around one token where a feature fired."""

    tokens: list[str]
    index: int  # position of the firing token in `tokens`
    value: float
    row: int  # global store row


@dataclass
class FeatureContexts:
    """The max-activating contexts of one feature, strongest first."""

    feature: int
    contexts: list[Context]

    def __repr__(self) -> str:
        lines = [f"f{self.feature}: {len(self.contexts)} top contexts"]
        for c in self.contexts:
            left, right = "".join(c.tokens[:c.index]), "".join(c.tokens[c.index + 1:])
            lines.append(f"  {c.value:7.3f}  {left!r} [[{c.tokens[c.index]}]] {right!r}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self.contexts:
            return f"<b>f{self.feature}</b>: never fired on the stored tokens"
        rows = []
        for c in self.contexts:
            values = np.zeros(len(c.tokens), dtype=np.float32)
            values[c.index] = c.value
            rows.append(f'<tr><td style="text-align:right;padding-right:8px">{c.value:.3g}</td>'
                        f"<td>{feature_plots.tokens_html(c.tokens, values, mark=c.index)}</td></tr>")
        return f"<b>f{self.feature}</b> max-activating contexts<table>{''.join(rows)}</table>"


def top_contexts(stats: FeatureStats, store, lm, feature: int, n: int = 10, before: int = 12,
                 after: int = 4) -> FeatureContexts:
    """The `n` stored tokens where `feature` fired most, each with a window of its document."""
    feature = check_feature(feature, stats.d_sae)
    if not 1 <= n <= stats.top_values.shape[0]:
        raise ValueError(f"n must be in 1..{stats.top_values.shape[0]} (feature_stats kept n_top rows)")
    contexts = []
    for value, row in zip(stats.top_values[:n, feature].tolist(), stats.top_rows[:n, feature].tolist()):
        if value <= 0:
            break
        ids, index = store.context(row, before=before, after=after)
        contexts.append(Context(tokens=lm.token_strings(list(ids)), index=index, value=value, row=row))
    return FeatureContexts(feature=feature, contexts=contexts)


# ---- logit lens --------------------------------------------------------------------------
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
        def column(items):
            return "".join(f"<tr><td><code>{html.escape(repr(t))}</code></td><td>{s:+.3f}</td></tr>" for t, s in items)

        return (f"<b>f{self.feature}</b> logit lens<table><tr><th>promotes</th><th>suppresses</th></tr><tr>"
                f"<td><table>{column(self.promoted)}</table></td><td><table>{column(self.suppressed)}</table></td>"
                "</tr></table>")


@torch.inference_mode()
def logit_lens(lm, sae, feature: int, k: int = 10, through_final_norm: bool = True) -> LogitLens | None:
    """unembed @ W_dec[feature] (scaled by the final norm's weight): None if the LM has no unembedding."""
    feature = check_feature(feature, d_sae_of(sae))
    unembed = lm.unembed()
    if unembed is None:
        return None
    if not 1 <= k <= unembed.shape[0]:
        raise ValueError(f"k must be in 1..{unembed.shape[0]} (vocabulary size), got {k}")
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


# ---- concept labels ------------------------------------------------------------------------
def auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """AUROC of every column of `scores` [n, F] for boolean `labels` [n], via average ranks (ties count 1/2)."""
    labels = torch.as_tensor(labels, dtype=torch.bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if scores.ndim != 2 or scores.shape[0] != len(labels):
        raise ValueError(f"scores must be [n, F] with n = len(labels) = {len(labels)}, got {tuple(scores.shape)}")
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    by_feature = scores.T.double().contiguous()  # [F, n]
    ordered = by_feature.sort(dim=1).values
    below = torch.searchsorted(ordered, by_feature, right=False)
    up_to = torch.searchsorted(ordered, by_feature, right=True)
    ranks = (below + up_to + 1) / 2  # 1-based, ties share their average rank
    rank_sum = ranks[:, labels].sum(dim=1)
    return ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).float()


@dataclass
class ConceptLabel:
    concept: str
    feature: int
    train_auroc: float
    test_auroc: float


@dataclass
class ConceptLabels:
    """Best-separating features per concept: chosen on the train split, scored on held-out texts."""

    rows: list[ConceptLabel]
    min_auroc: float
    n_train: int
    n_test: int

    @property
    def feature_labels(self) -> dict[int, str]:
        """feature -> concept, for rows whose held-out AUROC reaches `min_auroc` (best row wins)."""
        labels = {}
        for row in sorted(self.rows, key=lambda r: r.test_auroc):  # ascending: the best row is written last
            if row.test_auroc >= self.min_auroc:
                labels[row.feature] = row.concept
        return labels

    @property
    def features(self) -> list[int]:
        """Labelled features, best held-out AUROC first (a good list to put in a dashboard)."""
        order = sorted(self.rows, key=lambda r: -r.test_auroc)
        labelled = self.feature_labels
        return list(dict.fromkeys(r.feature for r in order if r.feature in labelled))

    def feature_of(self, concept: str) -> int:
        """The feature chosen for `concept` (best held-out AUROC if several)."""
        rows = [r for r in self.rows if r.concept == concept]
        if not rows:
            raise ValueError(f"Unknown concept {concept!r}; choose one of {sorted({r.concept for r in self.rows})}")
        return max(rows, key=lambda r: r.test_auroc).feature

    def coverage(self, min_auroc: float = 0.9) -> float:
        """Fraction of concepts whose best feature reaches `min_auroc` on the held-out split."""
        best = {}
        for row in self.rows:
            best[row.concept] = max(best.get(row.concept, 0.0), row.test_auroc)
        return sum(auc >= min_auroc for auc in best.values()) / len(best) if best else 0.0

    def auroc_of(self, feature: int) -> float | None:
        aucs = [r.test_auroc for r in self.rows if r.feature == feature]
        return max(aucs) if aucs else None

    def __repr__(self) -> str:
        lines = [f"Concept labels (train {self.n_train} texts, held-out {self.n_test}; labelled if held-out AUROC "
                 f">= {self.min_auroc})", f"{'concept':<20} {'feature':>8} {'train':>6} {'held-out':>8}"]
        lines += [f"{r.concept:<20} {r.feature:>8} {r.train_auroc:6.3f} {r.test_auroc:8.3f}" for r in self.rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{html.escape(r.concept)}</td><td>f{r.feature}</td><td>{r.train_auroc:.3f}</td>"
            f"<td><b>{r.test_auroc:.3f}</b></td><td>{'✓' if r.test_auroc >= self.min_auroc else ''}</td></tr>"
            for r in self.rows
        )
        return (f"<b>Concept labels</b> (chosen on {self.n_train} train texts, AUROC reported on {self.n_test} "
                f"held-out texts)<table><tr><th>concept</th><th>feature</th><th>train AUROC</th>"
                f"<th>held-out AUROC</th><th>label</th></tr>{body}</table>")


def label_from_scores(train_scores: Tensor, train_concepts: Sequence[str | None], test_scores: Tensor,
                      test_concepts: Sequence[str | None], per_concept: int = 1,
                      min_auroc: float = 0.9) -> ConceptLabels:
    """For each concept, the `per_concept` features with the best train AUROC (concept vs rest).

    Scores are [n_texts, d_sae] text-level activations; concepts are one name (or None) per text."""
    train_concepts, test_concepts = list(train_concepts), list(test_concepts)
    if len(train_concepts) != len(train_scores) or len(test_concepts) != len(test_scores):
        raise ValueError("Need one concept (or None) per row of train_scores and of test_scores")
    per_concept = check_top_k(per_concept, train_scores.shape[1])
    rows = []
    for concept in sorted({c for c in train_concepts if c is not None}):
        train_labels = torch.tensor([c == concept for c in train_concepts])
        test_labels = torch.tensor([c == concept for c in test_concepts])
        if test_labels.all() or not test_labels.any():
            raise ValueError(f"The held-out split needs texts with and without concept {concept!r}")
        train_auc = auroc(train_scores, train_labels)
        best = train_auc.topk(per_concept)
        test_auc = auroc(test_scores[:, best.indices], test_labels)
        rows += [ConceptLabel(concept, f, a, b)
                 for f, a, b in zip(best.indices.tolist(), best.values.tolist(), test_auc.tolist())]
    if not rows:
        raise ValueError("No concepts found: documents need a `concept` name")
    return ConceptLabels(rows=rows, min_auroc=min_auroc, n_train=len(train_concepts), n_test=len(test_concepts))


def label_concepts(lm, sae, train=None, test=None, per_concept: int = 1, min_auroc: float = 0.9,
                   batch_size: int = 32) -> ConceptLabels:
    """Label features with the concepts of data/concepts.jsonl (or given Documents): AUROC per feature."""
    from .corpus import load_concepts

    train = load_concepts("train") if train is None else list(train)
    test = load_concepts("heldout") if test is None else list(test)
    train_scores = text_maxima(lm, sae, [d.text for d in train], batch_size)
    test_scores = text_maxima(lm, sae, [d.text for d in test], batch_size)
    return label_from_scores(train_scores, [d.concept for d in train], test_scores, [d.concept for d in test],
                             per_concept, min_auroc)


def describe_features(features: Sequence[int], labels: ConceptLabels | None = None,
                      stats: FeatureStats | None = None, lm=None, n_tokens: int = 5) -> dict[int, str]:
    """A short description per feature: its concept label, else its most common top-activating tokens."""
    names = labels.feature_labels if labels is not None else {}
    descriptions = {}
    for feature in features:
        if feature in names:
            descriptions[feature] = f"{names[feature]} (AUROC {labels.auroc_of(feature):.2f})"
        elif stats is not None and lm is not None:
            check_feature(feature, stats.d_sae)
            fired = stats.top_values[:, feature] > 0
            common = Counter(stats.top_token_ids[fired, feature].tolist()).most_common(n_tokens)
            tokens = lm.token_strings([t for t, _ in common])
            descriptions[feature] = "top tokens: " + ", ".join(repr(t) for t in tokens) if tokens else "never fired"
        else:
            descriptions[feature] = "unlabelled"
    return descriptions


# ---- search and steering -------------------------------------------------------------------
def search_features(lm, sae, phrase: str, top_k: int = 10, labels: ConceptLabels | None = None) -> TopFeatures:
    """The features most active on `phrase` (max over its tokens)."""
    acts = encode_texts(lm, sae, [phrase])
    return top_features(acts, 0.0, top_k, labels)


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
        return (f"<b>{html.escape(self.intervention)}</b><table>"
                f"<tr><td>before</td><td><code>{html.escape(self.prompt)}</code><b>{html.escape(self.before)}</b></td></tr>"
                f"<tr><td>after</td><td><code>{html.escape(self.prompt)}</code><b>{html.escape(self.after)}</b></td></tr>"
                "</table>")


def _generate_pair(lm, sae, prompt: str, fn, intervention: str, max_new_tokens: int) -> Steering:
    check_texts([prompt])
    layer, site = hook_point(lm, sae)
    before = lm.generate(prompt, max_new_tokens=max_new_tokens)
    with lm.hooked(layer, site, fn):
        after = lm.generate(prompt, max_new_tokens=max_new_tokens)
    return Steering(prompt=prompt, intervention=intervention, before=before, after=after)


def steering_hook(sae, feature: int, alpha: float):
    """acts -> acts + alpha * W_dec[feature] (alpha in latent units: "as if the feature fired at alpha")."""
    feature = check_feature(feature, d_sae_of(sae))
    if not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
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
            latent = sae.encode(acts.to(direction.device, direction.dtype))[..., feature:feature + 1]
        return acts - (latent * direction).to(acts.device, acts.dtype)

    return remove


def steer(lm, sae, prompt: str, feature: int, alpha: float, max_new_tokens: int = 20) -> Steering:
    """Generate with alpha * W_dec[feature] added at every position of the SAE's layer."""
    hook = steering_hook(sae, feature, alpha)
    return _generate_pair(lm, sae, prompt, hook, f"f{feature} += {alpha:g}", max_new_tokens)


def ablate(lm, sae, prompt: str, feature: int, max_new_tokens: int = 20) -> Steering:
    """Generate with one feature zeroed (its contribution subtracted) at every position."""
    hook = ablation_hook(sae, feature)
    return _generate_pair(lm, sae, prompt, hook, f"f{feature} zeroed", max_new_tokens)
