"""The exercise checks say 'holds' exactly when the answer does."""

from __future__ import annotations

import pytest

from saelib import analysis
from saelib.analysis import exercises


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
