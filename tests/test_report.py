"""The static dashboard: one self-contained file; default features skip dead and dense ones."""

from __future__ import annotations

import itertools

import pytest
import torch

from saelib import analysis, report
from saelib.collection import collect
from saelib.errors import BadArgument


def test_dashboard_is_self_contained(tmp_path, tiny_llama, text_sae):
    sae = text_sae
    texts = [
        f"{a} {b}."
        for a, b in itertools.product(["Dogs run", "Cats sleep", "Cities grow"], ["fast", "today"])
    ]
    store = collect(tiny_llama, texts, tmp_path / "acts", layer=1, shard_tokens=32, progress=False)
    stats = analysis.feature_stats(sae, store, n_top=5, progress=False)
    features = stats.density.argsort(descending=True)[:2].tolist()
    path = report.write_dashboard(
        tmp_path / "run", tiny_llama, sae, store, features, stats=stats, n_contexts=3
    )
    page = path.read_text()
    assert path == tmp_path / "run" / "report" / "dashboard.html"
    assert page.count("data:image/png;base64,") == 1 + len(features)  # density overview + one histogram each
    assert "<script" not in page and "http://" not in page and "https://" not in page and "<link" not in page
    for f in features:
        assert f'id="f{f}"' in page and "logit lens" in page and "top tokens:" in page
    with pytest.raises(BadArgument, match="at least one feature"):
        report.write_dashboard(tmp_path / "run", tiny_llama, sae, store, [], stats=stats)


def test_dashboard_default_features_put_labelled_first_dense_last_and_skip_dead():
    stats = analysis.FeatureStats(
        n_tokens=100,
        density=torch.tensor([0.0, 0.5, 0.01, 0.02, 0.03]),
        mean_active=torch.ones(5),
        max_act=torch.tensor([0.0, 9.0, 1.0, 3.0, 2.0]),
        hist_counts=torch.zeros(5, 1, dtype=torch.int64),
        top_values=torch.zeros(1, 5),
        top_rows=torch.zeros(1, 5, dtype=torch.int64),
        top_token_ids=torch.zeros(1, 5, dtype=torch.int64),
    )
    assert report.default_features(stats, n=3) == [3, 4, 2]
    assert report.default_features(stats, n=5) == [3, 4, 2, 1]  # dense only when too few others; dead never
    labels = analysis.ConceptLabels([analysis.ConceptLabel("x", 2, 0.99, 0.97)], 0.9, 10, 10)
    assert report.default_features(stats, labels, n=3) == [2, 3, 4]
