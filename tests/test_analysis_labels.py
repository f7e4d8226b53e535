"""Concept labels: AUROC against its pairwise definition, a planted concept, the concept file end to end."""

from __future__ import annotations

import pytest
import torch

from saelib import analysis, corpus
from saelib.corpus import Document
from saelib.errors import BadArgument


@pytest.fixture(scope="module")
def sae(text_sae):
    return text_sae


def test_auroc_matches_pairwise_definition_with_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (30, 6), generator=gen).float()  # many ties, like sparse latents
    labels = torch.rand(30, generator=gen) > 0.6
    got = analysis.auroc(scores, labels)
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None, :] > neg[None, :, :]).float() + 0.5 * (pos[:, None, :] == neg[None, :, :]).float()
    assert torch.allclose(got, wins.mean(dim=(0, 1)), atol=1e-6)
    with pytest.raises(BadArgument, match="both positive and negative"):
        analysis.auroc(scores, torch.ones(30, dtype=torch.bool))


def test_labeller_finds_planted_concept():
    """Feature 7 fires on 'animals' texts only; the other features are noise."""
    gen = torch.Generator().manual_seed(1)
    concepts = ["animals", "cities", None]

    def split(n):
        names = [concepts[i % 3] for i in range(n)]
        scores = torch.relu(torch.randn(n, 40, generator=gen))
        fires = torch.tensor([c == "animals" for c in names])
        scores[:, 7] = torch.where(
            fires, 2.0 + torch.rand(n, generator=gen), 0.3 * torch.rand(n, generator=gen)
        )
        return scores, names

    train_scores, train_names = split(90)
    test_scores, test_names = split(45)
    labels = analysis.label_from_scores(train_scores, train_names, test_scores, test_names, min_auroc=0.95)
    animals = next(r for r in labels.rows if r.concept == "animals")
    assert animals.feature == 7 and animals.train_auroc >= 0.95 and animals.test_auroc >= 0.95
    assert labels.feature_labels.get(7) == "animals" and labels.feature_of("animals") == 7
    assert labels.features[0] == 7 and labels.coverage(0.95) >= 0.5
    assert "held-out AUROC" in labels._repr_html_() and "animals" in repr(labels)
    descriptions = analysis.describe_features([7, 8], labels)
    assert descriptions[7].startswith("animals (AUROC") and descriptions[8] == "unlabelled"
    assert analysis.feature_name(7, labels.feature_labels) == "f7 (animals)"
    with pytest.raises(BadArgument, match="Unknown concept 'plants'"):
        labels.feature_of("plants")


def test_label_concepts_defaults_to_the_concept_file(tiny_llama, sae, monkeypatch):
    load_concepts, splits = corpus.load_concepts, []

    def thinned(split=None):  # the real file, every 6th row (2+ held-out texts per concept) to stay fast
        splits.append(split)
        return load_concepts(split)[::6]

    monkeypatch.setattr(corpus, "load_concepts", thinned)
    labels = analysis.label_concepts(tiny_llama, sae, batch_size=64)
    assert splits == ["train", "heldout"]
    assert len(labels.rows) == len({d.concept for d in load_concepts()})
    assert labels.n_train == len(load_concepts("train")[::6])
    assert labels.n_test == len(load_concepts("heldout")[::6])
    top = analysis.top_features(
        analysis.encode_texts(tiny_llama, sae, ["Dogs are man's best friend."]), labels=labels
    )
    assert top.labels == labels.feature_labels


def test_label_concepts_end_to_end_on_documents(tiny_llama, sae):
    animals = ["The dog barks.", "A cat sleeps.", "The horse runs.", "Birds sing.", "The cow eats grass."]
    other = [
        "Stocks fell today.",
        "The train is late.",
        "Rain is coming.",
        "Add two numbers.",
        "Paris is big.",
    ]
    docs = [Document(t, "test", "animals") for t in animals] + [Document(t, "test", None) for t in other]
    labels = analysis.label_concepts(tiny_llama, sae, train=docs[::2] + docs[1::2], test=docs, per_concept=3)
    assert [r.concept for r in labels.rows] == ["animals"] * 3
    assert all(0.0 <= r.test_auroc <= 1.0 and 0.0 <= r.train_auroc <= 1.0 for r in labels.rows)
    with pytest.raises(BadArgument, match="held-out split needs texts with and without"):
        analysis.label_concepts(tiny_llama, sae, train=docs, test=docs[:5])


def test_label_concepts_from_probe_data_equal_a_fresh_lm_pass(tiny_llama, sae, monkeypatch):
    from saelib import evals, probes

    load_concepts = corpus.load_concepts
    monkeypatch.setattr(corpus, "load_concepts", lambda split=None: load_concepts(split)[::6])
    monkeypatch.setattr(evals, "load_concepts", corpus.load_concepts)
    fresh = analysis.label_concepts(tiny_llama, sae)
    concepts = evals.concept_activations(tiny_llama, *analysis.hook_point(tiny_llama, sae))
    reused = analysis.label_concepts(tiny_llama, sae, probes=probes.ProbeData(concepts, letters=None))
    assert [(r.concept, r.feature) for r in reused.rows] == [(r.concept, r.feature) for r in fresh.rows]
    torch.testing.assert_close(
        torch.tensor([r.test_auroc for r in reused.rows]), torch.tensor([r.test_auroc for r in fresh.rows])
    )
