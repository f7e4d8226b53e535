"""What a notebook cell shows for the objects a student meets first: one fact per line, no long one-liner."""

from __future__ import annotations

from conftest import random_sae

from saelib import analysis
from saelib.trainer import TrainConfig


def test_sae_repr_puts_each_metadata_entry_on_its_own_line():
    lines = repr(random_sae("topk", 12, 40, k=5, layer=2)).splitlines()
    assert lines == ["SAE(topk, d_in=12, d_sae=40, k=5)", "  model: 'tiny'", "  layer: 2", "  site: 'resid'"]


def test_train_config_repr_is_one_field_per_line_and_evaluates():
    config = TrainConfig(k=8, lr=1e-3)
    text = repr(config)
    assert "\n    k=8,\n" in text and max(len(line) for line in text.splitlines()) < 60
    assert eval(text) == config
    default_lr = repr(TrainConfig(arch="jumprelu"))
    assert "\n    lr=None,  # jumprelu's default: 0.0012\n" in default_lr and eval(default_lr).lr is None


def test_concept_labels_repr_is_a_table():
    rows = [analysis.ConceptLabel("animals", 3, 0.95, 0.91), analysis.ConceptLabel("cooking", 7, 0.9, 0.6)]
    lines = repr(analysis.ConceptLabels(rows, min_auroc=0.8, n_train=10, n_test=5)).splitlines()
    assert len(lines) == 4 and lines[2].split() == ["animals", "3", "0.950", "0.910"]
