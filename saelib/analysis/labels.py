"""Names for features: concept labels chosen by AUROC on labelled texts (saelib/data/concepts.jsonl), and
short descriptions for the features no concept explains.

A feature labels a concept when its max-over-tokens activation separates the concept's texts
from the rest: chosen on the train split, scored on held-out texts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saelib import corpus, html
from saelib.analysis.checks import check_feature, check_top_k
from saelib.analysis.encode import text_maxima
from saelib.analysis.stats import FeatureStats
from saelib.errors import BadArgument
from saelib.evals import concept_maxima
from saelib.probes import ProbeData


def auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """AUROC of each column of `scores` [n, F] for boolean `labels` [n], by average ranks (ties count 1/2)."""
    labels = torch.as_tensor(labels, dtype=torch.bool)
    if scores.ndim != 2 or scores.shape[0] != len(labels):
        raise BadArgument(
            f"scores must be [n, F] with n = len(labels) = {len(labels)}, got {tuple(scores.shape)}"
        )
    return auroc_from_ranks(ranks(scores), labels)


def ranks(scores: Tensor) -> Tensor:
    """[F, n] 1-based rank of each of the n scores within its column of `scores` [n, F], ties sharing
    their average rank: computed once, it gives the AUROC of any labelling (`auroc_from_ranks`)."""
    by_feature = scores.T.double().contiguous()
    ordered = by_feature.sort(dim=1).values
    below = torch.searchsorted(ordered, by_feature, right=False)
    up_to = torch.searchsorted(ordered, by_feature, right=True)
    return (below + up_to + 1) / 2


def auroc_from_ranks(ranks: Tensor, labels: Tensor) -> Tensor:
    """AUROC per feature from `ranks` [F, n] and boolean `labels` [n] (Mann-Whitney U / (n_pos n_neg))."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise BadArgument("AUROC needs both positive and negative examples")
    rank_sum = ranks[:, labels].sum(dim=1)
    return ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).float()


@dataclass
class ConceptLabel:
    concept: str
    feature: int
    train_auroc: float
    test_auroc: float


@dataclass
class ConceptLabels:
    """Best-separating features per concept: chosen on the train split, scored on held-out texts."""

    rows: list[ConceptLabel]
    min_auroc: float
    n_train: int
    n_test: int

    @property
    def feature_labels(self) -> dict[int, str]:
        """feature -> concept, for rows whose held-out AUROC reaches `min_auroc` (best row wins)."""
        labels = {}
        for row in sorted(self.rows, key=lambda r: r.test_auroc):  # ascending: the best row is written last
            if row.test_auroc >= self.min_auroc:
                labels[row.feature] = row.concept
        return labels

    @property
    def features(self) -> list[int]:
        """Labelled features, best held-out AUROC first (a good list to put in a dashboard)."""
        order = sorted(self.rows, key=lambda r: -r.test_auroc)
        labelled = self.feature_labels
        return list(dict.fromkeys(r.feature for r in order if r.feature in labelled))

    def feature_of(self, concept: str) -> int:
        """The feature chosen for `concept` (best held-out AUROC if several)."""
        rows = [r for r in self.rows if r.concept == concept]
        if not rows:
            raise BadArgument(
                f"Unknown concept {concept!r}; choose one of {sorted({r.concept for r in self.rows})}"
            )
        return max(rows, key=lambda r: r.test_auroc).feature

    def coverage(self, min_auroc: float = 0.9) -> float:
        """Fraction of concepts whose best feature reaches `min_auroc` on the held-out split."""
        best = {}
        for row in self.rows:
            best[row.concept] = max(best.get(row.concept, 0.0), row.test_auroc)
        return sum(auc >= min_auroc for auc in best.values()) / len(best) if best else 0.0

    def auroc_of(self, feature: int) -> float | None:
        aucs = [r.test_auroc for r in self.rows if r.feature == feature]
        return max(aucs) if aucs else None

    def __repr__(self) -> str:
        lines = [
            f"Concept labels (train {self.n_train} texts, held-out {self.n_test}; labelled if held-out AUROC "
            f">= {self.min_auroc})",
            f"{'concept':<20} {'feature':>8} {'train':>6} {'held-out':>8}",
        ]
        lines += [
            f"{r.concept:<20} {r.feature:>8} {r.train_auroc:6.3f} {r.test_auroc:8.3f}" for r in self.rows
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return html.concept_labels_html(self)


def label_from_scores(
    train_scores: Tensor,
    train_concepts: Sequence[str | None],
    test_scores: Tensor,
    test_concepts: Sequence[str | None],
    per_concept: int = 1,
    min_auroc: float = 0.9,
) -> ConceptLabels:
    """For each concept, the `per_concept` features with the best train AUROC (concept vs rest).

    Scores are [n_texts, d_sae] text-level activations; concepts are one name (or None) per text."""
    train_concepts, test_concepts = list(train_concepts), list(test_concepts)
    if len(train_concepts) != len(train_scores) or len(test_concepts) != len(test_scores):
        raise BadArgument("Need one concept (or None) per row of train_scores and of test_scores")
    per_concept = check_top_k(per_concept, train_scores.shape[1])
    train_ranks = ranks(train_scores)  # once for every concept
    rows = []
    for concept in sorted({c for c in train_concepts if c is not None}):
        train_labels = torch.tensor([c == concept for c in train_concepts])
        test_labels = torch.tensor([c == concept for c in test_concepts])
        if test_labels.all() or not test_labels.any():
            raise BadArgument(f"The held-out split needs texts with and without concept {concept!r}")
        train_auc = auroc_from_ranks(train_ranks, train_labels)
        best = train_auc.topk(per_concept)
        test_auc = auroc(test_scores[:, best.indices], test_labels)
        rows += [
            ConceptLabel(concept, f, a, b)
            for f, a, b in zip(best.indices.tolist(), best.values.tolist(), test_auc.tolist())
        ]
    if not rows:
        raise BadArgument("No concepts found: documents need a `concept` name")
    return ConceptLabels(
        rows=rows, min_auroc=min_auroc, n_train=len(train_concepts), n_test=len(test_concepts)
    )


def label_concepts(
    lm,
    sae,
    train=None,
    test=None,
    per_concept: int = 1,
    min_auroc: float = 0.9,
    batch_size: int = 32,
    probes: ProbeData | None = None,
) -> ConceptLabels:
    """Label features with the concepts of the shipped concept file (or given Documents) by AUROC.

    `probes` (from `saelib.probe_data`, for the shipped file) hold the LM's activations of those texts
    already, so the LM does not run again."""
    if probes is not None and train is None and test is None:
        return label_from_scores(
            *probes.concepts.split(concept_maxima(sae, probes.concepts)), per_concept, min_auroc
        )
    train = corpus.load_concepts("train") if train is None else list(train)
    test = corpus.load_concepts("heldout") if test is None else list(test)
    train_scores = text_maxima(lm, sae, [d.text for d in train], batch_size)
    test_scores = text_maxima(lm, sae, [d.text for d in test], batch_size)
    return label_from_scores(
        train_scores,
        [d.concept for d in train],
        test_scores,
        [d.concept for d in test],
        per_concept,
        min_auroc,
    )


# ---- names for display -------------------------------------------------------------------------
def label_names(labels: ConceptLabels | dict[int, str] | None) -> dict[int, str]:
    """feature -> name from a `ConceptLabels` table, a plain dict, or nothing."""
    return dict(getattr(labels, "feature_labels", labels) or {})


def feature_name(feature: int, names: dict[int, str] | None) -> str:
    return f"f{feature}" + (f" ({names[feature]})" if names and feature in names else "")


def describe_features(
    features: Sequence[int],
    labels: ConceptLabels | None = None,
    stats: FeatureStats | None = None,
    lm=None,
    n_tokens: int = 5,
) -> dict[int, str]:
    """A short description per feature: its concept label, else its most common top-activating tokens."""
    names = labels.feature_labels if labels is not None else {}
    descriptions = {}
    for feature in features:
        if feature in names:
            descriptions[feature] = f"{names[feature]} (AUROC {labels.auroc_of(feature):.2f})"
        elif stats is not None and lm is not None:
            check_feature(feature, stats.d_sae)
            fired = stats.top_values[:, feature] > 0
            common = Counter(stats.top_token_ids[fired, feature].tolist()).most_common(n_tokens)
            tokens = lm.token_strings([t for t, _ in common])
            descriptions[feature] = (
                "top tokens: " + ", ".join(repr(t) for t in tokens) if tokens else "never fired"
            )
        else:
            descriptions[feature] = "unlabelled"
    return descriptions
