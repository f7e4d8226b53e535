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
from saelib.lm import TokenActivations


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


def check_largest_norm(sample: TokenActivations, position: int) -> Verdict:
    """Holds when, in every text of `sample` (from `lm.activations`), the token at `position` has the
    largest activation norm: the attention sink of notebook 01."""
    argmax = [int(acts.norm(dim=-1).argmax()) for acts in sample.acts]
    hits = sum(found == position for found in argmax)
    tokens = sorted({tokens[found] for tokens, found in zip(sample.tokens, argmax)})
    return Verdict(
        hits == len(argmax),
        f"the token at position {position} has the largest norm in {hits} of {len(argmax)} texts "
        f"(the largest are {', '.join(repr(t) for t in tokens)})",
    )


def check_token_count(lm, text: str, count: int) -> Verdict:
    """Holds when `count` is the number of tokens the model reads for `text`: the tokenizer's tokens
    plus the sink token saelib puts first (when the tokenizer adds none itself)."""
    words = len(lm.tokenizer(text)["input_ids"])
    sink = int(lm.sink_id is not None)
    return Verdict(
        count == words + sink,
        f"{text!r} becomes {words + sink} tokens ({words} from the tokenizer"
        + (f" + the sink token {lm.sink_token!r}" if sink else "")
        + f"); you said {count}",
    )


def check_frontier_point(metrics: dict, main_metrics: dict, k: int) -> Verdict:
    """Holds when the SAE of `metrics` has L0 = `k` and, if the main SAE is less sparse, reconstructs
    worse than it: fewer latents per token cost faithfulness, as the frontier shows."""
    at_k = abs(metrics["l0"] - k) < 0.5
    sparser = metrics["l0"] < main_metrics["l0"] - 0.5
    worse = metrics["fvu"] > main_metrics["fvu"]
    return Verdict(
        at_k and (worse or not sparser),
        f"L0 {metrics['l0']:.1f} (asked for {k}) and FVU {metrics['fvu']:.3f}, against the main SAE's "
        f"L0 {main_metrics['l0']:.1f} and FVU {main_metrics['fvu']:.3f}"
        + ("" if sparser else " (the main SAE is no less sparse, so the FVUs are not compared)"),
    )


def check_dead_fraction(metrics: dict, dead_frac: float, under_2_percent: bool) -> Verdict:
    """Holds when `dead_frac` is the metrics' dead fraction (a fraction, not a percentage) and
    `under_2_percent` says rightly whether it is below 0.02."""
    true_frac = metrics["dead_frac"]
    read_right = abs(dead_frac - true_frac) < 1e-4
    judged_right = under_2_percent == (true_frac < 0.02)
    return Verdict(
        read_right and judged_right,
        f"{true_frac:.2%} of latents are dead ({'under' if true_frac < 0.02 else 'not under'} 2%); "
        f"you read {dead_frac:.4g} and said {'under' if under_2_percent else 'not under'} 2%",
    )
