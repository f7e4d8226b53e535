"""Per-feature statistics streamed over a planted store, read through an identity 'SAE'."""

from __future__ import annotations

import pytest
import torch
from conftest import identity_sae

from saelib import analysis
from saelib.collection import store_from_tensor
from saelib.errors import BadArgument


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """Rows of a store whose 'SAE' is the identity: latent j of row i is relu(acts[i, j])."""
    gen = torch.Generator().manual_seed(2)
    acts = torch.relu(torch.randn(700, 6, generator=gen)) * torch.tensor([1, 1, 1, 1, 1, 0.0])
    acts[[17, 350, 699], 2] = torch.tensor([50.0, 60.0, 40.0])  # planted top rows of feature 2
    return acts, store_from_tensor(acts, tmp_path_factory.mktemp("store"), shard_tokens=128)


def test_feature_stats_stream_matches_dense(planted_store):
    acts, store = planted_store
    stats = analysis.feature_stats(identity_sae(6), store, n_top=5, batch_tokens=50, progress=False)
    assert stats.n_tokens == 700
    assert torch.allclose(stats.density, (acts > 0).float().mean(0))
    assert torch.allclose(stats.max_act, acts.max(0).values)
    assert torch.equal(stats.hist_counts.sum(1), (acts > 0).sum(0))
    dense_top = acts.topk(5, dim=0)
    assert torch.allclose(stats.top_values, dense_top.values)
    assert stats.top_rows[:3, 2].tolist() == [350, 17, 699]
    fired = stats.top_values > 0  # every kept value sits at its row, with that row's token
    features = torch.arange(6).expand(5, 6)
    assert torch.equal(acts[stats.top_rows[fired], features[fired]], stats.top_values[fired])
    row_tokens = [store.context(row, before=0, after=0)[0][0] for row in stats.top_rows[fired].tolist()]
    assert stats.top_token_ids[fired].tolist() == row_tokens
    active_mean = (acts.sum(0) / (acts > 0).sum(0).clamp(min=1)).float()
    assert torch.allclose(stats.mean_active, active_mean)
    assert stats.density[5] == 0 and "1 never fired" in repr(stats)
    assert stats.histogram(2).axes[0].get_xscale() == "log"
    assert "5 alive, 1 never fired" in stats.density_plot([2]).axes[0].get_title()
    limited = analysis.feature_stats(identity_sae(6), store, n_top=3, max_tokens=200, progress=False)
    assert limited.n_tokens == 200 and limited.top_rows[0, 2] == 17
    with pytest.raises(BadArgument, match="n_top and batch_tokens must be >= 1"):
        analysis.feature_stats(identity_sae(6), store, n_top=0)


def test_top_contexts_point_at_the_firing_token(planted_store, tiny_llama):
    acts, store = planted_store
    stats = analysis.feature_stats(identity_sae(6), store, n_top=4, progress=False)
    contexts = analysis.top_contexts(stats, store, tiny_llama, feature=2, n=3, before=5, after=2)
    assert [c.row for c in contexts.contexts] == [350, 17, 699]
    first = contexts.contexts[0]
    assert first.value == 60.0 and first.index == 5 and len(first.tokens) == 8  # row 350 is mid-document
    assert contexts.contexts[1].index == 5  # row 17 = position 17 of document 0
    assert "outline" in contexts._repr_html_() and "[[" in repr(contexts)
    never = analysis.top_contexts(stats, store, tiny_llama, feature=5, n=2)
    assert never.contexts == [] and "never fired" in never._repr_html_()
    with pytest.raises(BadArgument, match="n must be in 1..4"):
        analysis.top_contexts(stats, store, tiny_llama, feature=2, n=9)
