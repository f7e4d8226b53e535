"""What a trained SAE's features do, one job per module; imports flow down this list:

    checks.py         input checks shared with the explorer and the dashboard
    encode.py         texts -> per-token SAE latents (the LM runs here)
    stats.py          per-feature statistics streamed over the store; max-activating contexts
    labels.py         concept labels by AUROC; feature names and descriptions
    texts.py          per-text views: top features, overlap, heatmaps, coloured text, search
    interventions.py  logit lens, steering and its strength sweep, ablation
    exercises.py      checks that say whether a notebook exercise's answer holds

Everything expensive (running the LM, encoding a store) happens once and is kept in a small
object (`TextActivations`, `FeatureStats`); the views read those. HTML lives in `saelib.html`,
figures in `saelib.figures` (imported only when a figure is drawn).
"""

from saelib.analysis.checks import (
    check_density,
    check_feature,
    check_texts,
    check_threshold,
    check_top_k,
    d_sae_of,
)
from saelib.analysis.encode import encode_latents, hook_point, max_over_tokens, text_maxima
from saelib.analysis.exercises import (
    Verdict,
    check_changed,
    check_concept_feature,
    check_dead_fraction,
    check_frontier_point,
    check_largest_norm,
    check_steering_gain,
    check_token_count,
)
from saelib.analysis.interventions import (
    LogitLens,
    Steering,
    SteeringSweep,
    ablate,
    ablation_hook,
    continuation_logprob,
    final_norm_weight,
    logit_lens,
    steer,
    steering_hook,
    steering_sweep,
)
from saelib.analysis.labels import (
    ConceptLabel,
    ConceptLabels,
    auroc,
    describe_features,
    feature_name,
    label_concepts,
    label_from_scores,
    label_names,
)
from saelib.analysis.stats import (
    HIST_EDGES,
    Context,
    FeatureContexts,
    FeatureStats,
    feature_stats,
    top_contexts,
)
from saelib.analysis.texts import (
    TextActivations,
    TopFeatures,
    active_fraction,
    color_text,
    encode_texts,
    search_features,
    shared_counts,
    show_overlap,
    token_heatmap,
    top_features,
)

__all__ = [
    "HIST_EDGES",
    "ConceptLabel",
    "ConceptLabels",
    "Context",
    "FeatureContexts",
    "FeatureStats",
    "LogitLens",
    "Steering",
    "SteeringSweep",
    "TextActivations",
    "TopFeatures",
    "Verdict",
    "ablate",
    "ablation_hook",
    "active_fraction",
    "auroc",
    "check_changed",
    "check_concept_feature",
    "check_dead_fraction",
    "check_density",
    "check_feature",
    "check_frontier_point",
    "check_largest_norm",
    "check_steering_gain",
    "check_texts",
    "check_threshold",
    "check_token_count",
    "check_top_k",
    "color_text",
    "continuation_logprob",
    "d_sae_of",
    "describe_features",
    "encode_latents",
    "encode_texts",
    "feature_name",
    "feature_stats",
    "final_norm_weight",
    "hook_point",
    "label_concepts",
    "label_from_scores",
    "label_names",
    "logit_lens",
    "max_over_tokens",
    "search_features",
    "shared_counts",
    "show_overlap",
    "steer",
    "steering_hook",
    "steering_sweep",
    "text_maxima",
    "token_heatmap",
    "top_contexts",
    "top_features",
]
