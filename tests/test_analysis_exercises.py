"""The exercise checks say 'holds' exactly when the answer does."""

from __future__ import annotations

import pytest
import torch

from saelib import analysis
from saelib.analysis import exercises
from saelib.lm import TokenActivations


@pytest.fixture(scope="module")
def sae(text_sae):
    return text_sae


def test_concept_feature_holds_for_a_separating_feature_only(tiny_llama, sae):
    mine, others = ["Dogs bark.", "Dogs run.", "Dogs sleep."], ["London is big.", "Paris is old."]
    maxima = analysis.text_maxima(tiny_llama, sae, mine + others)
    gap = maxima[:3].min(dim=0).values - maxima[3:].max(dim=0).values
    separating, mixed = int(gap.argmax()), int(gap.argmin())
    assert gap[separating] > 0 > gap[mixed]
    verdict = exercises.check_concept_feature(tiny_llama, sae, separating, mine, others)
    assert verdict.holds and "AUROC 1.00" in repr(verdict) and "✓ holds" in verdict._repr_html_()
    assert not exercises.check_concept_feature(tiny_llama, sae, mixed, mine, others).holds


def test_steering_and_change_checks_read_the_result():
    sweep = analysis.SteeringSweep("p", "f1 (music)", "music", 2, [0.0, 1.0], [-5.0, -4.5])
    gained = exercises.check_steering_gain(sweep)
    assert gained.holds and "+0.500" in repr(gained)
    flat = analysis.SteeringSweep("p", "f1 (music)", "music", 2, [0.0, 1.0], [-5.0, -6.0])
    assert not exercises.check_steering_gain(flat).holds
    same = analysis.Steering("p", "f1 zeroed", " a b", " a b")
    assert not exercises.check_changed(same).holds and "word for word" in repr(exercises.check_changed(same))
    assert exercises.check_changed(analysis.Steering("p", "f1 zeroed", " a b", " a c")).holds


def test_largest_norm_holds_only_when_every_text_peaks_there():
    sink_first = [torch.tensor([[9.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 7.0], [1.0, 1.0]])]
    sample = TokenActivations(
        sink_first, [torch.tensor([0, 1, 2]), torch.tensor([0, 3])], [["<s>", "a", "b"], ["<s>", "c"]]
    )
    verdict = exercises.check_largest_norm(sample, 0)
    assert verdict.holds and "2 of 2 texts" in repr(verdict) and "'<s>'" in repr(verdict)
    assert not exercises.check_largest_norm(sample, 1).holds
    sample.acts[1] = torch.tensor([[0.0, 1.0], [5.0, 5.0]])
    assert "1 of 2 texts" in repr(exercises.check_largest_norm(sample, 0))


def test_token_count_counts_the_sink_token(tiny_llama):
    text = "Dogs bark at night."
    n_read = len(tiny_llama.activations(text, layer=1).tokens[0])
    assert exercises.check_token_count(tiny_llama, text, n_read).holds
    assert not exercises.check_token_count(tiny_llama, text, n_read - 1).holds
    assert not exercises.check_token_count(tiny_llama, text, n_read + 1).holds


def test_frontier_point_needs_l0_k_and_a_worse_fvu_than_a_denser_sae():
    main = {"l0": 32.0, "fvu": 0.2}
    assert exercises.check_frontier_point({"l0": 8.0, "fvu": 0.35}, main, 8).holds
    assert not exercises.check_frontier_point({"l0": 8.0, "fvu": 0.15}, main, 8).holds
    assert not exercises.check_frontier_point({"l0": 12.0, "fvu": 0.35}, main, 8).holds
    same_k = exercises.check_frontier_point({"l0": 8.0, "fvu": 0.15}, {"l0": 8.0, "fvu": 0.2}, 8)
    assert same_k.holds and "not compared" in repr(same_k)


def test_dead_fraction_needs_the_value_and_the_right_judgement():
    metrics = {"dead_frac": 0.005}
    assert exercises.check_dead_fraction(metrics, 0.005, True).holds
    assert not exercises.check_dead_fraction(metrics, 0.005, False).holds
    assert not exercises.check_dead_fraction(metrics, 0.5, True).holds  # a percentage, not a fraction
    assert exercises.check_dead_fraction({"dead_frac": 0.03}, 0.03, False).holds
