"""Analysis views on planted latents, a tiny random LM and hand-set SAEs (no training, no hub)."""
from __future__ import annotations

import itertools
import re

import pytest
import torch

from saelib import analysis, report, widgets
from saelib.sae import SAE, SAEConfig
from saelib.store import store_from_tensor

LAYER = 1
TEXTS = ["Dogs are man's best friend.", "Neural networks process information.", "London is a major city."]


def relu_sae(d_in: int, d_sae: int, scale: float = 5.0, bias: float = -1.0, seed: int = 0) -> SAE:
    """A random ReLU SAE on the tiny LM's residual stream (activation norms ~0.2 there)."""
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, arch="relu"), meta={"layer": LAYER, "site": "resid"})
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) * scale)
        sae.b_enc.fill_(bias)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) / d_in**0.5)
    return sae.eval()


@pytest.fixture(scope="module")
def sae(tiny_llama) -> SAE:
    return relu_sae(tiny_llama.d_model, 96)


def planted_acts(latents_per_text: list[torch.Tensor]) -> analysis.TextActivations:
    tokens = [[f"t{i}" for i in range(len(lat))] for lat in latents_per_text]
    return analysis.TextActivations(texts=[f"text {i}" for i in range(len(tokens))], tokens=tokens,
                                    latents=latents_per_text)


# ---- per-text views ---------------------------------------------------------------------------
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
    with pytest.raises(ValueError, match="density"):
        analysis.top_features(acts, top_k=1, density=torch.ones(3))


def test_encode_texts_defaults_to_starter_sentences_and_views_render(tiny_llama, sae):
    acts = analysis.encode_texts(tiny_llama, sae)
    from saelib.corpus import STARTER_SENTENCES

    assert acts.texts == list(STARTER_SENTENCES)
    assert [len(t) for t in acts.tokens] == [len(lat) for lat in acts.latents]
    expected = sae.encode(tiny_llama.activations(acts.texts, layer=LAYER).acts[1])
    assert torch.allclose(acts.latents[1], expected, atol=1e-5)
    top = analysis.top_features(acts, top_k=5)
    assert all(len(f) == 5 for f in top.features)
    heatmap = analysis.token_heatmap(acts, text=0, top_k=4).data
    assert heatmap.count("<tr>") == 5 and "f%d" % top.features[0][0] in heatmap
    coloured = analysis.color_text(acts, top.features[0][0]).data
    assert coloured.count("<span title=") == sum(len(t) - 1 for t in acts.tokens)  # first tokens are not scored


def test_search_features_ranks_by_activation(tiny_llama, sae):
    found = analysis.search_features(tiny_llama, sae, "London is a major city.", top_k=3, labels={7: "seven"})
    direct = analysis.encode_texts(tiny_llama, sae, ["London is a major city."]).text_max[0]
    assert found.features[0] == direct.topk(3).indices.tolist() and found.labels == {7: "seven"}


def test_text_maxima_batches_by_length_but_keeps_order(tiny_llama, sae):
    texts = ["A much longer sentence about dogs, cats and a major city.", "Short one.", TEXTS[1], "Mid length text."]
    batched = analysis.text_maxima(tiny_llama, sae, texts, batch_size=2)
    one_by_one = torch.stack([analysis.encode_texts(tiny_llama, sae, [t]).text_max[0] for t in texts])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


# ---- bad input --------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_value_errors(tiny_llama, sae):
    acts = analysis.encode_texts(tiny_llama, sae, TEXTS[:1])
    with pytest.raises(ValueError, match="out of range.*0..95"):
        analysis.color_text(acts, 96)
    with pytest.raises(ValueError, match="out of range"):
        analysis.logit_lens(tiny_llama, sae, -1)
    with pytest.raises(ValueError, match="Empty text"):
        analysis.encode_texts(tiny_llama, sae, ["  "])
    with pytest.raises(ValueError, match="Empty text"):
        analysis.search_features(tiny_llama, sae, "")
    with pytest.raises(ValueError, match="threshold must be"):
        analysis.top_features(acts, threshold=-0.1)
    with pytest.raises(ValueError, match=r"top_k must be an integer in 1..96"):
        analysis.top_features(acts, top_k=97)
    with pytest.raises(ValueError, match="top_k"):
        widgets.Explorer(tiny_llama, sae, TEXTS, top_k=1000)
    with pytest.raises(ValueError, match="out of range"):
        analysis.steer(tiny_llama, sae, "Hello", feature=500, alpha=1.0)


# ---- concept labels ---------------------------------------------------------------------------
def test_auroc_matches_pairwise_definition_with_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (30, 6), generator=gen).float()  # many ties, like sparse latents
    labels = torch.rand(30, generator=gen) > 0.6
    got = analysis.auroc(scores, labels)
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None, :] > neg[None, :, :]).float() + 0.5 * (pos[:, None, :] == neg[None, :, :]).float()
    assert torch.allclose(got, wins.mean(dim=(0, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="both positive and negative"):
        analysis.auroc(scores, torch.ones(30, dtype=torch.bool))


def test_labeller_finds_planted_concept():
    """Feature 7 fires on 'animals' texts only; the other features are noise."""
    gen = torch.Generator().manual_seed(1)
    concepts = ["animals", "cities", None]

    def split(n):
        names = [concepts[i % 3] for i in range(n)]
        scores = torch.relu(torch.randn(n, 40, generator=gen))
        fires = torch.tensor([c == "animals" for c in names])
        scores[:, 7] = torch.where(fires, 2.0 + torch.rand(n, generator=gen), 0.3 * torch.rand(n, generator=gen))
        return scores, names

    train_scores, train_names = split(90)
    test_scores, test_names = split(45)
    labels = analysis.label_from_scores(train_scores, train_names, test_scores, test_names, min_auroc=0.95)
    animals = next(r for r in labels.rows if r.concept == "animals")
    assert animals.feature == 7 and animals.train_auroc >= 0.95 and animals.test_auroc >= 0.95
    assert labels.feature_labels.get(7) == "animals"
    assert labels.features[0] == 7
    assert "held-out AUROC" in labels._repr_html_()
    assert analysis.describe_features([7], labels)[7].startswith("animals (AUROC")


def test_label_concepts_defaults_to_the_concept_file(tiny_llama, sae, monkeypatch):
    from saelib import corpus

    load_concepts, splits = corpus.load_concepts, []

    def thinned(split=None):  # the real file, every 6th row (2+ held-out texts per concept) to stay fast
        splits.append(split)
        return load_concepts(split)[::6]

    monkeypatch.setattr(corpus, "load_concepts", thinned)
    labels = analysis.label_concepts(tiny_llama, sae, batch_size=64)
    assert splits == ["train", "heldout"]
    assert len(labels.rows) == len({d.concept for d in load_concepts()})
    assert labels.n_train == len(load_concepts("train")[::6]) and labels.n_test == len(load_concepts("heldout")[::6])
    top = analysis.top_features(analysis.encode_texts(tiny_llama, sae, TEXTS[:1]), labels=labels)
    assert top.labels == labels.feature_labels


def test_label_concepts_end_to_end_on_documents(tiny_llama, sae):
    from saelib.corpus import Document

    animals = ["The dog barks.", "A cat sleeps.", "The horse runs.", "Birds sing.", "The cow eats grass."]
    other = ["Stocks fell today.", "The train is late.", "Rain is coming.", "Add two numbers.", "Paris is big."]
    docs = [Document(t, "test", "animals") for t in animals] + [Document(t, "test", None) for t in other]
    labels = analysis.label_concepts(tiny_llama, sae, train=docs[::2] + docs[1::2], test=docs, per_concept=3)
    assert [r.concept for r in labels.rows] == ["animals"] * 3
    assert all(0.0 <= r.test_auroc <= 1.0 and 0.0 <= r.train_auroc <= 1.0 for r in labels.rows)


# ---- per-feature statistics from the store ----------------------------------------------------
@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """Rows of a store whose 'SAE' is the identity: latent j of row i is relu(acts[i, j])."""
    gen = torch.Generator().manual_seed(2)
    acts = torch.relu(torch.randn(700, 6, generator=gen)) * torch.tensor([1, 1, 1, 1, 1, 0.0])
    acts[[17, 350, 699], 2] = torch.tensor([50.0, 60.0, 40.0])  # planted top rows of feature 2
    return acts, store_from_tensor(acts, tmp_path_factory.mktemp("store"), shard_tokens=128)


def identity_sae(d: int) -> SAE:
    sae = SAE(SAEConfig(d_in=d, d_sae=d, arch="relu"), meta={"layer": LAYER, "site": "resid"})
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae


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
    assert stats.density[5] == 0 and "1 never fired" in repr(stats)
    assert stats.histogram(2).axes[0].get_xscale() == "log"
    limited = analysis.feature_stats(identity_sae(6), store, n_top=3, max_tokens=200, progress=False)
    assert limited.n_tokens == 200 and limited.top_rows[0, 2] == 17


def test_top_contexts_point_at_the_firing_token(planted_store, tiny_llama):
    acts, store = planted_store
    stats = analysis.feature_stats(identity_sae(6), store, n_top=4, progress=False)
    contexts = analysis.top_contexts(stats, store, tiny_llama, feature=2, n=3, before=5, after=2)
    assert [c.row for c in contexts.contexts] == [350, 17, 699]
    first = contexts.contexts[0]
    assert first.value == 60.0 and first.index == 5 and len(first.tokens) == 8  # row 350 is mid-document
    assert contexts.contexts[1].index == 5  # row 17 = position 17 of document 0
    assert "outline" in contexts._repr_html_()
    assert analysis.top_contexts(stats, store, tiny_llama, feature=5, n=2).contexts == []  # never fired
    with pytest.raises(ValueError, match="n must be in 1..4"):
        analysis.top_contexts(stats, store, tiny_llama, feature=2, n=9)


# ---- logit lens and steering ------------------------------------------------------------------
def test_logit_lens_recovers_planted_token_direction(tiny_llama):
    unembed = tiny_llama.unembed()
    norm = analysis.final_norm_weight(tiny_llama)
    assert norm is not None and norm.shape == (tiny_llama.d_model,)
    sae = relu_sae(tiny_llama.d_model, 8)
    target = 123
    with torch.no_grad():
        sae.W_dec[3] = unembed[target] / norm - 0.5 * unembed[7] / norm
    lens = analysis.logit_lens(tiny_llama, sae, 3, k=5)
    promoted = [t for t, _ in lens.promoted]
    assert promoted[0] == tiny_llama.token_strings([target])[0]
    assert lens.suppressed[0][0] == tiny_llama.token_strings([7])[0]
    assert lens.promoted[0][1] > 0 > lens.suppressed[0][1]


def test_logit_lens_is_none_without_unembedding(tiny_llama, sae, monkeypatch):
    monkeypatch.setattr(tiny_llama, "unembed", lambda: None)
    assert analysis.logit_lens(tiny_llama, sae, 0) is None


def test_steering_changes_generation_and_zero_alpha_does_not(tiny_llama, sae):
    prompt = "Dogs are"
    unchanged = analysis.steer(tiny_llama, sae, prompt, feature=0, alpha=0.0, max_new_tokens=6)
    assert unchanged.before == unchanged.after
    steered = analysis.steer(tiny_llama, sae, prompt, feature=0, alpha=200.0, max_new_tokens=6)
    assert steered.before == unchanged.before and steered.after != steered.before
    assert "f0 += 200" in steered._repr_html_()


def test_ablation_subtracts_exactly_that_features_contribution(tiny_llama, sae):
    acts = tiny_llama.activations(["Neural networks process information."], layer=LAYER).acts[0]
    feature = int(sae.encode(acts).sum(0).argmax())
    expected = acts - sae.encode(acts)[:, feature:feature + 1] * sae.W_dec[feature]
    assert torch.allclose(analysis.ablation_hook(sae, feature)(acts), expected.detach(), atol=1e-6)
    assert torch.allclose(analysis.steering_hook(sae, feature, 2.0)(acts), acts + 2.0 * sae.W_dec[feature].detach())


def test_ablating_a_silent_feature_keeps_the_text_and_a_loud_one_changes_it(tiny_llama):
    sae = relu_sae(tiny_llama.d_model, 8)
    with torch.no_grad():
        sae.b_enc[2] = -1e6  # never fires
        sae.W_enc[:, 5], sae.b_enc[5] = 0.0, 1.0  # fires at 1.0 on every token...
        sae.W_dec[5] = 50.0 * tiny_llama.unembed()[11]  # ...and dominates the residual stream
    quiet = analysis.ablate(tiny_llama, sae, "Dogs are", feature=2, max_new_tokens=6)
    assert quiet.after == quiet.before
    loud = analysis.ablate(tiny_llama, sae, "Dogs are", feature=5, max_new_tokens=6)
    assert loud.after != loud.before and loud.intervention == "f5 zeroed"


# ---- widget logic without a browser ------------------------------------------------------------
def test_explorer_redraws_from_cache_and_only_text_box_encodes(tiny_llama, sae, monkeypatch):
    explorer = widgets.Explorer(tiny_llama, sae, TEXTS, threshold=0.0, top_k=5)
    calls = []
    original = tiny_llama.activations
    monkeypatch.setattr(tiny_llama, "activations", lambda *a, **k: calls.append(1) or original(*a, **k))

    def listed(view: str) -> list[int]:
        return [int(n) for n in re.findall(r"(\d+) listed", view)]

    assert listed(explorer.view.value) == [5, 5, 5]
    explorer.top_k.value = 2
    assert listed(explorer.view.value) == [2, 2, 2]
    explorer.threshold.value = explorer.threshold.max  # nothing exceeds the global maximum
    assert listed(explorer.view.value) == [0, 0, 0] and "0 of 96 latents active" in explorer.view.value
    explorer.feature.value = explorer.feature.options[-1][1]
    assert calls == [] and 0 < explorer.last_redraw_ms < 100
    assert f"redraw {explorer.last_redraw_ms:.1f} ms" == explorer.status.value
    explorer.text.value = "A single new line of text."
    assert len(calls) == 1 and explorer.acts.texts == ["A single new line of text."]
    explorer.text.value = "   "
    assert len(calls) == 1 and "non-empty" in explorer.status.value


def test_explorer_display_emits_widget_and_static_copy(tiny_llama, sae, monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "display", shown.append)
    explorer = widgets.Explorer(tiny_llama, sae, TEXTS[:2], top_k=3)
    explorer._ipython_display_()
    assert shown[0] is explorer.widget
    assert "3 listed" in shown[1].data and "Static copy" in shown[1].data


# ---- dashboard -------------------------------------------------------------------------------
def test_dashboard_is_self_contained(tmp_path, tiny_llama, sae):
    store = tiny_llama_store(tiny_llama, tmp_path)
    stats = analysis.feature_stats(sae, store, n_top=5, progress=False)
    features = stats.density.argsort(descending=True)[:2].tolist()
    path = report.write_dashboard(tmp_path / "run", tiny_llama, sae, store, features, stats=stats, n_contexts=3)
    page = path.read_text()
    assert path == tmp_path / "run" / "report" / "dashboard.html"
    assert page.count("data:image/png;base64,") == 1 + len(features)  # density overview + one histogram each
    assert "<script" not in page and "http://" not in page and "https://" not in page and "<link" not in page
    for f in features:
        assert f'id="f{f}"' in page and "logit lens" in page and "top tokens:" in page
    with pytest.raises(ValueError, match="at least one feature"):
        report.write_dashboard(tmp_path / "run", tiny_llama, sae, store, [], stats=stats)


def test_dashboard_default_features_put_labelled_first_and_skip_dead_and_dense():
    stats = analysis.FeatureStats(
        n_tokens=100, density=torch.tensor([0.0, 0.5, 0.01, 0.02, 0.03]), mean_active=torch.ones(5),
        max_act=torch.tensor([0.0, 9.0, 1.0, 3.0, 2.0]), hist_counts=torch.zeros(5, 1, dtype=torch.int64),
        top_values=torch.zeros(1, 5), top_rows=torch.zeros(1, 5, dtype=torch.int64),
        top_token_ids=torch.zeros(1, 5, dtype=torch.int64))
    assert report.default_features(stats, n=3) == [3, 4, 2]
    labels = analysis.ConceptLabels([analysis.ConceptLabel("x", 2, 0.99, 0.97)], 0.9, 10, 10)
    assert report.default_features(stats, labels, n=3) == [2, 3, 4]


def tiny_llama_store(lm, tmp_path):
    from saelib.store import collect

    texts = [f"{a} {b}." for a, b in itertools.product(["Dogs run", "Cats sleep", "Cities grow"], ["fast", "today"])]
    return collect(lm, texts, tmp_path / "acts", layer=LAYER, shard_tokens=32, progress=False)


def test_explorer_can_rank_by_specificity(tiny_llama, sae):
    plain = widgets.Explorer(tiny_llama, sae, TEXTS, top_k=1)
    strongest = analysis.top_features(plain.acts, top_k=1).features[0][0]
    density = torch.full((analysis.d_sae_of(sae),), 0.001)
    density[strongest] = 0.9  # fires everywhere: specificity ranking should pass it over
    ranked = widgets.Explorer(tiny_llama, sae, TEXTS, top_k=1, density=density)
    expected = analysis.top_features(ranked.acts, top_k=1, density=density).features[0][0]
    assert expected != strongest
    assert f"f{expected}" in ranked.render().split("<code>")[1]
