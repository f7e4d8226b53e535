"""Per-text views on planted latents and on a tiny random LM with a random ReLU SAE (no training, no hub)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelib import analysis
from saelib.corpus import STARTER_SENTENCES
from saelib.errors import BadArgument

LAYER = 1


# ---- on planted latents ---------------------------------------------------------------------------
def planted_acts(latents_per_text: list[torch.Tensor]) -> analysis.TextActivations:
    tokens = [[f"t{i}" for i in range(len(lat))] for lat in latents_per_text]
    texts = [f"text {i}" for i in range(len(tokens))]
    return analysis.TextActivations(texts=texts, tokens=tokens, latents=latents_per_text)


def test_top_features_threshold_skips_first_token_and_counts_active():
    lat = torch.zeros(4, 10)
    lat[0, 9] = 100.0  # first token: attention sink, must be ignored
    lat[1, 3], lat[2, 5], lat[3, 1] = 3.0, 2.0, 0.5
    top = analysis.top_features(planted_acts([lat]), threshold=0.0, top_k=5)
    assert top.features == [[3, 5, 1]] and top.values == [[3.0, 2.0, 0.5]]
    assert top.n_active == [3] and top.active_fraction == [0.3]
    top = analysis.top_features(planted_acts([lat]), threshold=1.0, top_k=5)
    assert top.features == [[3, 5]] and top.n_active == [2]
    assert analysis.top_features(planted_acts([lat]), threshold=0.0, top_k=1).features == [[3]]
    assert "2 of 10 latents active (20.00%)" in top._repr_html_() and "f3" in repr(top)
    assert torch.allclose(analysis.active_fraction(planted_acts([lat]), 1.0), torch.tensor([0.2]))


def test_shared_counts_of_top_sets():
    a, b, c = torch.zeros(3, 8), torch.zeros(3, 8), torch.zeros(3, 8)
    a[1, [0, 1]] = 1.0
    b[1, [1, 2]] = 1.0
    c[2, [5, 6]] = 1.0
    shared = analysis.shared_counts(planted_acts([a, b, c]), top_k=2)
    assert torch.equal(shared, torch.tensor([[2, 1, 0], [1, 2, 0], [0, 0, 2]]))
    fig = analysis.show_overlap(planted_acts([a, b, c]), top_k=2)
    assert "at most 1" in fig.axes[0].get_title()


def test_density_ranking_prefers_rare_features():
    lat = torch.zeros(2, 6)
    lat[1, 0], lat[1, 1] = 3.0, 2.0  # feature 0 is stronger here but fires on half of all tokens
    acts = planted_acts([lat])
    assert analysis.top_features(acts, top_k=1).features == [[0]]
    density = torch.tensor([0.5, 0.001, 0.01, 0.01, 0.01, 0.0])
    ranked = analysis.top_features(acts, top_k=1, density=density)
    assert ranked.features == [[1]] and ranked.values == [[2.0]] and "density" in repr(ranked)
    assert ranked.scores[0][0] == pytest.approx(2.0 * -np.log(0.001))  # the chips show what the order is by
    two = analysis.top_features(acts, top_k=2, density=density)
    assert two.scores[0] == sorted(two.scores[0], reverse=True) and two.values[0] == [2.0, 3.0]
    chips = two._repr_html_()
    assert "each chip shows its max activation x log(1/density)" in chips
    assert chips.index(f"<b>{two.scores[0][0]:.2f}</b>") < chips.index(f"<b>{two.scores[0][1]:.2f}</b>")
    with pytest.raises(BadArgument, match="density"):
        analysis.top_features(acts, top_k=1, density=torch.ones(3))


# ---- on a tiny random LM -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sae(text_sae):
    return text_sae


def test_encode_texts_defaults_to_starter_sentences_and_views_render(tiny_llama, sae):
    acts = analysis.encode_texts(tiny_llama, sae)
    assert acts.texts == list(STARTER_SENTENCES)
    assert [len(t) for t in acts.tokens] == [len(lat) for lat in acts.latents]
    expected = sae.encode(tiny_llama.activations(acts.texts, layer=LAYER).acts[1])
    assert torch.allclose(acts.latents[1], expected, atol=1e-5)
    top = analysis.top_features(acts, top_k=5)
    assert all(len(f) == 5 for f in top.features)
    heatmap = analysis.token_heatmap(acts, text=0, top_k=4).data
    assert heatmap.count("<tr>") == 5 and f"f{top.features[0][0]}" in heatmap
    coloured = analysis.color_text(acts, top.features[0][0]).data
    scored_tokens = sum(len(t) - 1 for t in acts.tokens)  # first tokens are not scored
    assert coloured.count("<span title=") == scored_tokens


def test_search_features_ranks_by_activation_or_specificity(tiny_llama, sae):
    found = analysis.search_features(tiny_llama, sae, "London is a major city.", top_k=3, labels={7: "seven"})
    direct = analysis.encode_texts(tiny_llama, sae, ["London is a major city."]).text_max[0]
    assert found.features[0] == direct.topk(3).indices.tolist() and found.labels == {7: "seven"}
    density = torch.full((direct.shape[0],), 0.001)
    density[found.features[0][0]] = 0.5  # the strongest fires everywhere: specificity passes it over
    specific = analysis.search_features(tiny_llama, sae, "London is a major city.", top_k=3, density=density)
    assert found.features[0][0] not in specific.features[0][:1] and "log(1/density)" in specific.settings


def test_bad_inputs_name_the_fix(tiny_llama, sae):
    acts = analysis.encode_texts(tiny_llama, sae, ["Dogs are man's best friend."])
    with pytest.raises(BadArgument, match="out of range.*0..95"):
        analysis.color_text(acts, 96)
    with pytest.raises(BadArgument, match="text index 1 is out of range"):
        analysis.token_heatmap(acts, text=1)
    with pytest.raises(BadArgument, match="Empty text"):
        analysis.encode_texts(tiny_llama, sae, ["  "])
    with pytest.raises(BadArgument, match="Empty text"):
        analysis.search_features(tiny_llama, sae, "")
    with pytest.raises(BadArgument, match="threshold must be"):
        analysis.top_features(acts, threshold=-0.1)
    with pytest.raises(BadArgument, match=r"top_k must be an integer in 1..96"):
        analysis.top_features(acts, top_k=97)
