"""Checks for the notebooks' exercises: each looks at a student's answer and says in one sentence
whether it holds, so a lesson needs no answer key to mark the exercise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import torch

from saelib import corpus
from saelib.analysis.checks import check_feature, check_texts, d_sae_of
from saelib.analysis.encode import text_maxima
from saelib.analysis.interventions import Steering, SteeringSweep
from saelib.analysis.labels import auroc


@dataclass
class Verdict:
    """Whether an exercise's answer holds, and why, in one sentence."""

    holds: bool
    reason: str

    def __repr__(self) -> str:
        return ("holds: " if self.holds else "does not hold yet: ") + self.reason

    def _repr_html_(self) -> str:
        mark, colour = ("✓ holds", "#1a7f37") if self.holds else ("✗ does not hold yet", "#b35900")
        return f'<p><b style="color:{colour}">{mark}</b>: {escape(self.reason)}</p>'


def check_concept_feature(
    lm, sae, feature: int, texts: Sequence[str], others: Sequence[str] | None = None, min_auroc: float = 0.9
) -> Verdict:
    """Does `feature` fire more on your concept's `texts` than on `others` (default: the starter sentences)?
    Holds when its max activation separates them with an AUROC of at least `min_auroc`."""
    feature = check_feature(feature, d_sae_of(sae))
    texts = check_texts(texts)
    others = check_texts(list(corpus.STARTER_SENTENCES) if others is None else others)
    scores = text_maxima(lm, sae, texts + others)[:, feature : feature + 1]
    is_concept = torch.tensor([True] * len(texts) + [False] * len(others))
    separation = float(auroc(scores, is_concept)[0])
    fired = int((scores[: len(texts), 0] > 0).sum())
    return Verdict(
        separation >= min_auroc,
        f"f{feature} fires on {fired} of your {len(texts)} texts and separates them from "
        f"{len(others)} others with AUROC {separation:.2f} (needed: {min_auroc})",
    )


def check_steering_gain(sweep: SteeringSweep) -> Verdict:
    """Holds when some steering strength makes the concept's sentences more likely than no steering."""
    return Verdict(
        sweep.gain > 0,
        f"steering with {sweep.name} at alpha {sweep.best_alpha:.3g} changes the log-prob per token of "
        f"{sweep.concept} sentences by {sweep.gain:+.3f}",
    )


def check_changed(steering: Steering) -> Verdict:
    """Holds when the intervention changed the generated continuation."""
    same = "left the continuation word for word the same"
    effect = "changed the continuation" if steering.changed else same
    return Verdict(steering.changed, f"{steering.intervention} on {steering.prompt!r} {effect}")
