"""A static, self-contained HTML dashboard of chosen features: one file, inline CSS, PNGs as base64,
no scripts and no CDN, so it opens anywhere (and can be attached to an issue or e-mail)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from html import escape
from pathlib import Path

from saelib import analysis, html
from saelib.atomic import write_text
from saelib.errors import BadArgument

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 22px; }
h2 { font-size: 17px; margin-top: 28px; border-top: 1px solid #ddd; padding-top: 12px; }
.meta { color: #555; font-size: 13px; }
.grid { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 1px 6px; vertical-align: top; }
img { max-width: 100%; }
"""


def _feature_section(feature: int, description: str, stats, store, lm, sae, n_contexts: int) -> str:
    contexts = analysis.top_contexts(stats, store, lm, feature, n=min(n_contexts, stats.top_values.shape[0]))
    lens = analysis.logit_lens(lm, sae, feature)
    lens_html = html.logit_lens_html(lens) if lens else "<i>this model has no unembedding: no logit lens</i>"
    density = stats.density[feature]
    histogram = html.figure_img(stats.histogram(feature))
    return (
        f'<h2 id="f{feature}">Feature {feature}: {escape(description)}</h2>'
        f'<p class="meta">firing density {density:.3e} ({int(density * stats.n_tokens)} '
        f"of {stats.n_tokens} tokens) · mean when active {stats.mean_active[feature]:.3g} · "
        f"max {stats.max_act[feature]:.3g}</p>"
        f'<div class="grid"><div>{histogram}</div><div>{lens_html}</div></div>'
        f"{html.feature_contexts_html(contexts)}"
    )


def default_features(
    stats: analysis.FeatureStats,
    labels: analysis.ConceptLabels | None = None,
    n: int = 8,
    max_density: float = 0.05,
) -> list[int]:
    """Labelled features first, then the strongest features that are neither dead nor dense; dense ones
    only when too few others fire (a tiny SAE, or one whose every latent fires often)."""
    chosen = labels.features[:n] if labels is not None else []
    alive = stats.density > 0
    sparse = alive & (stats.density <= max_density)
    strongest = stats.max_act.argsort(descending=True).tolist()
    candidates = [f for f in strongest if sparse[f]] + [f for f in strongest if alive[f] and not sparse[f]]
    chosen += [f for f in candidates if f not in chosen][: n - len(chosen)]
    return chosen


def write_dashboard(
    run_dir: str | os.PathLike,
    lm,
    sae,
    store,
    features: Sequence[int] | None = None,
    stats: analysis.FeatureStats | None = None,
    labels: analysis.ConceptLabels | None = None,
    n_contexts: int = 10,
    title: str = "saelib feature dashboard",
) -> Path:
    """Write run_dir/report/dashboard.html and return its path; `features` default to `default_features`.

    Pass the `stats` from `analysis.feature_stats` to reuse them (computing them encodes the store)."""
    if stats is None:
        stats = analysis.feature_stats(sae, store, n_top=max(n_contexts, 1))
    if features is None:
        features = default_features(stats, labels)
    features = list(dict.fromkeys(analysis.check_feature(f, analysis.d_sae_of(sae)) for f in features))
    if not features:
        raise BadArgument("Pass at least one feature index to put in the dashboard")
    descriptions = analysis.describe_features(features, labels, stats, lm)
    arch = getattr(getattr(sae, "cfg", None), "arch", "")
    index = " · ".join(f'<a href="#f{f}">f{f}</a>' for f in features)
    body = "".join(_feature_section(f, descriptions[f], stats, store, lm, sae, n_contexts) for f in features)
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f'<p class="meta">model {escape(str(store.model_name))} · layer {store.layer} {escape(store.site)} · '
        f"d_sae {stats.d_sae} {escape(str(arch))}"
        f" · statistics over {stats.n_tokens} stored tokens</p>"
        f"<div>{html.figure_img(stats.density_plot(features))}</div>"
        f"{f'<div>{html.concept_labels_html(labels)}</div>' if labels is not None else ''}"
        f"<p>Features: {index}</p>{body}</body></html>"
    )
    out = Path(run_dir) / "report" / "dashboard.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, page)
    return out
