"""The probing evaluations' LM data: cached in a run folder per model, layer and site."""

import torch

from saelib import corpus, evals, probes


def test_probe_data_is_cached_per_model_layer_and_site(tiny_llama, tmp_path, monkeypatch):
    thinned = lambda split=None: corpus.load_concepts(split)[::6]
    monkeypatch.setattr(evals, "load_concepts", thinned)
    monkeypatch.setattr(probes, "load_concepts", thinned)
    first = probes.probe_data(tiny_llama, 1, "resid", cache_dir=tmp_path)
    assert (tmp_path / probes.PROBE_CACHE_FILE).exists()
    computed, concept_activations = [], probes.concept_activations
    monkeypatch.setattr(
        probes, "concept_activations", lambda *args: computed.append(args) or concept_activations(*args)
    )
    again = probes.probe_data(tiny_llama, 1, "resid", cache_dir=tmp_path)
    assert computed == []  # read back, the LM did not run
    assert again.concepts.concepts == first.concepts.concepts
    assert all(torch.equal(a, b) for a, b in zip(again.concepts.acts, first.concepts.acts, strict=True))
    assert torch.equal(again.concepts.is_train, first.concepts.is_train)
    assert again.letters.tokens == first.letters.tokens
    for name in ("acts", "letters", "is_train", "probe_weight", "probe_bias"):
        assert torch.equal(getattr(again.letters, name), getattr(first.letters, name))
    probes.probe_data(tiny_llama, 2, "resid", cache_dir=tmp_path)
    assert len(computed) == 1  # another layer: computed, and cached in its place
    (tmp_path / probes.PROBE_CACHE_FILE).write_bytes(b"not a safetensors file")
    probes.probe_data(tiny_llama, 2, "resid", cache_dir=tmp_path)
    assert len(computed) == 2  # a damaged cache is computed again
    probes.probe_data(tiny_llama, 2, "resid", cache_dir=tmp_path)
    assert len(computed) == 2
