"""Per-feature statistics from one streaming pass over the activation store, and the stored
contexts where a feature fired most.

Encoding the store is the expensive part, so `feature_stats` keeps everything the views need
(density, histogram, top rows) in a small `FeatureStats`; `top_contexts` and the figures read it. It is
saved next to the SAE's folder and reused while the SAE and the store stay the same (`stats_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saelib import html
from saelib.analysis import stats_cache
from saelib.analysis.checks import check_feature, d_sae_of
from saelib.analysis.encode import encode_latents
from saelib.errors import BadArgument

HIST_EDGES = torch.logspace(-4, 4, 65)  # log-spaced bins for activation histograms (8 per decade)


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
        from saelib import figures

        feature = check_feature(feature, self.d_sae)
        return figures.histogram_figure(
            HIST_EDGES.numpy(),
            self.hist_counts[feature].numpy(),
            title=f"f{feature}: density {self.density[feature]:.2e}, max {self.max_act[feature]:.3g}",
        )

    def density_plot(self, features: Sequence[int] = ()):
        """Figure: log firing density of all features, chosen ones marked."""
        from saelib import figures

        marked = {check_feature(f, self.d_sae): float(self.density[f]) for f in features}
        return figures.density_figure(self.density.numpy(), marked)


@torch.inference_mode()
def feature_stats(
    sae,
    store,
    n_top: int = 20,
    max_tokens: int | None = None,
    batch_tokens: int = 2048,
    progress: bool = True,
    cache: bool = True,
) -> FeatureStats:
    """Encode the store shard by shard, keeping running top-`n_top` rows per feature (bounded memory).

    With `cache`, an SAE loaded from or saved to a folder (`sae.path`) keeps the result there and a later
    call with the same SAE weights, store and `max_tokens` (and at most that `n_top`) reads it back."""
    if n_top < 1 or batch_tokens < 1:
        raise BadArgument("n_top and batch_tokens must be >= 1")
    folder = getattr(sae, "path", None) if cache else None
    if folder is None:
        return _compute(sae, store, n_top, max_tokens, batch_tokens, progress)
    key = {
        "sae_sha256": stats_cache.sae_fingerprint(sae),
        "store_sha256": stats_cache.store_fingerprint(store),
        "max_tokens": max_tokens,
        "hist_edges": HIST_EDGES.tolist(),
    }
    found = stats_cache.read(folder, key)
    if found is not None and found[1]["n_top"] >= n_top:
        tensors, info = found
        top = {name: tensors[name][:n_top] for name in ("top_values", "top_rows", "top_token_ids")}
        return FeatureStats(n_tokens=info["n_tokens"], **{**tensors, **top})
    stats = _compute(sae, store, n_top, max_tokens, batch_tokens, progress)
    tensors = {name: value for name, value in vars(stats).items() if name != "n_tokens"}
    stats_cache.write(folder, key, tensors, {"n_top": n_top, "n_tokens": stats.n_tokens})
    return stats


def _compute(
    sae, store, n_top: int, max_tokens: int | None, batch_tokens: int, progress: bool
) -> FeatureStats:
    """The pass over the store."""
    from tqdm.auto import tqdm

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
            latents = encode_latents(sae, shard.acts[start:stop])
            # a few dozen of d_sae latents fire per token: every statistic reads only those entries
            rows, feats = (latents > 0).nonzero(as_tuple=True)
            values = latents[rows, feats]
            fired += torch.bincount(feats, minlength=d_sae)
            act_sum.index_add_(0, feats, values.double())
            max_act.scatter_reduce_(0, feats, values, "amax")
            bins = (torch.bucketize(values, HIST_EDGES) - 1).clamp(0, n_bins - 1)
            hist += torch.bincount(feats * n_bins + bins, minlength=d_sae * n_bins)
            chunk_values, chunk_rows = _top_per_feature(values, rows, feats, n_top, d_sae)
            filled = chunk_rows >= 0
            chunk_ids = shard.token_ids[start:stop][chunk_rows.clamp(min=0)].masked_fill(~filled, 0)
            chunk_rows = torch.where(filled, chunk_rows + shard.offset + start, -1)
            top_values, pick = torch.cat([top_values, chunk_values]).topk(n_top, dim=0)
            top_rows = torch.cat([top_rows, chunk_rows]).gather(0, pick)
            top_ids = torch.cat([top_ids, chunk_ids]).gather(0, pick)
            seen += len(latents)
            bar.update(len(latents))
    bar.close()
    if seen == 0:
        raise BadArgument("The store has no tokens: collect activations first")
    return FeatureStats(
        n_tokens=seen,
        density=fired.float() / seen,
        mean_active=(act_sum / fired.clamp(min=1)).float(),
        max_act=max_act,
        hist_counts=hist.view(d_sae, n_bins),
        top_values=top_values,
        top_rows=top_rows,
        top_token_ids=top_ids,
    )


def _top_per_feature(
    values: Tensor, rows: Tensor, feats: Tensor, n_top: int, d_sae: int
) -> tuple[Tensor, Tensor]:
    """[n_top, d_sae] largest `values` of each feature among the (row, feature, value) entries, descending,
    and their rows; a feature with fewer entries gets zeros and row -1. Sorting the few entries replaces
    a top-n over the dense [rows, d_sae] latents down the column, which is slow on a CPU."""
    order = values.argsort(descending=True, stable=True)
    order = order[feats[order].argsort(stable=True)]  # grouped by feature, each group descending
    sorted_feats = feats[order]
    counts = torch.bincount(sorted_feats, minlength=d_sae)
    rank = torch.arange(len(order)) - (counts.cumsum(0) - counts)[sorted_feats]  # place within the group
    kept = rank < n_top
    at = (rank[kept], sorted_feats[kept])
    top_values = torch.zeros(n_top, d_sae, dtype=values.dtype)
    top_rows = torch.full((n_top, d_sae), -1, dtype=torch.int64)
    top_values[at] = values[order[kept]]
    top_rows[at] = rows[order[kept]]
    return top_values, top_rows


# ---- max-activating contexts ---------------------------------------------------------------------
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
            left, right = "".join(c.tokens[: c.index]), "".join(c.tokens[c.index + 1 :])
            lines.append(f"  {c.value:7.3f}  {left!r} [[{c.tokens[c.index]}]] {right!r}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return html.feature_contexts_html(self)


def top_contexts(
    stats: FeatureStats, store, lm, feature: int, n: int = 10, before: int = 12, after: int = 4
) -> FeatureContexts:
    """The `n` stored tokens where `feature` fired most, each with a window of its document."""
    feature = check_feature(feature, stats.d_sae)
    if not 1 <= n <= stats.top_values.shape[0]:
        raise BadArgument(f"n must be in 1..{stats.top_values.shape[0]} (feature_stats kept n_top rows)")
    contexts = []
    for value, row in zip(stats.top_values[:n, feature].tolist(), stats.top_rows[:n, feature].tolist()):
        if value <= 0:
            break
        ids, index = store.context(row, before=before, after=after)
        contexts.append(Context(tokens=lm.text_pieces(list(ids)), index=index, value=value, row=row))
    return FeatureContexts(feature=feature, contexts=contexts)
