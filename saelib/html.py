"""HTML for everything saelib shows that is not a matplotlib figure: coloured tokens, heatmaps, the
result objects' `_repr_html_`, the notebooks' tables and the dashboard's inline images.

HTML is used wherever a widget redraws, because building a string takes microseconds while
rendering a matplotlib figure takes ~100 ms. The renderers are pure functions returning strings;
result objects (`TopFeatures`, `FeatureContexts`, `LogitLens`, `ConceptLabels`, `Steering`) are
read by attribute, so this module imports nothing from `saelib.analysis`. Only `as_html`,
the tables and `show_source` return IPython display objects, for a notebook cell to show.
"""

from __future__ import annotations

import base64
import io
import unicodedata
from html import escape

import numpy as np

HIGHLIGHT_RGB = (255, 140, 0)  # orange: one colour for "this token activates the feature"


def as_html(markup: str):
    """An IPython HTML object, which a notebook cell (also under papermill) shows as rendered HTML."""
    from IPython.display import HTML

    return HTML(markup)


# ---- tokens shaded by activation ------------------------------------------------------------
def _token_text(token: str) -> str:
    """Escape a token for HTML and make whitespace visible."""
    return escape(token).replace("\n", "↵").replace("\t", "⇥") or "∅"


def printable_token(token: str) -> str:
    """A token quoted, with every character that would not show as itself escaped: control and format
    characters, combining marks and variation selectors (a lone '\u0bcd' or '\ufe0f' draws as a smudge)."""
    chars = []
    for char in token:
        category = unicodedata.category(char)
        if char in "\n\t\r\\'":
            chars.append(repr(char)[1:-1] if char != "'" else "\\'")
        elif category[0] in "CM" or (category[0] == "Z" and char != " "):
            chars.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
        else:
            chars.append(char)
    return "'" + "".join(chars) + "'"


def _shade(value: float, vmax: float) -> str:
    alpha = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0)
    r, g, b = HIGHLIGHT_RGB
    return f"rgba({r},{g},{b},{alpha:.2f})"


def tokens_html(tokens: list[str], values, vmax: float | None = None, mark: int | None = None) -> str:
    """Text with each token's background shaded by `values` (one per token); hover shows the value.

    `mark` outlines one token (the max-activating position of a context window)."""
    values = np.asarray(values, dtype=np.float32)
    vmax = float(values.max(initial=0.0)) if vmax is None else vmax
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values)):
        border = "outline:2px solid #c00;" if i == mark else ""
        spans.append(
            f'<span title="{value:.3g}" style="background:{_shade(float(value), vmax)};{border}'
            f'white-space:pre-wrap">{_token_text(token)}</span>'
        )
    return '<span style="font-family:monospace">' + "".join(spans) + "</span>"


def heatmap_html(tokens: list[str], features: list[int], values, labels: dict[int, str] | None = None) -> str:
    """A table with one row per feature and one column per token, cells shaded by activation.

    `values` is [n_tokens, n_features]; each row is scaled by its own maximum so weak features
    stay visible next to strong ones (the number in the cell is the raw activation)."""
    values = np.asarray(values, dtype=np.float32).reshape(len(tokens), len(features))
    head = "".join(f'<th style="font-family:monospace;padding:2px 4px">{_token_text(t)}</th>' for t in tokens)
    rows = []
    for j, feature in enumerate(features):
        column = values[:, j]
        vmax = float(column.max(initial=0.0))
        name = f"f{feature}" + (f" {escape(labels[feature])}" if labels and feature in labels else "")
        cells = "".join(
            f'<td style="background:{_shade(float(v), vmax)};text-align:right;padding:2px 4px">'
            f"{'' if v <= 0 else f'{v:.2g}'}</td>"
            for v in column
        )
        rows.append(f'<tr><th style="text-align:left;padding:2px 4px">{name}</th>{cells}</tr>')
    table = '<table style="border-collapse:collapse;font-size:12px">'
    return f"{table}<tr><th></th>{head}</tr>{''.join(rows)}</table>"


def coloured_texts_html(texts: list[tuple[list[str], np.ndarray]], name: str) -> str:
    """Several texts, each a (tokens, one feature's values) pair, shaded on one colour scale."""
    vmax = max(float(values.max()) for _, values in texts)
    lines = [tokens_html(tokens, values, vmax) for tokens, values in texts]
    return f"<b>{escape(name)}</b> on each text (max {vmax:.3g})<br>" + "<br>".join(lines)


# ---- result objects of saelib.analysis --------------------------------------------------------
def top_features_html(top) -> str:
    """A `TopFeatures`: per text its summary and one chip per listed feature, in ranking order, each
    showing the number it is ranked by (hover: its max activation)."""
    parts = [f"<b>Top features</b> ({top.settings}; each chip shows its {top.ranking})"]
    for i, text in enumerate(top.texts):
        chips = " ".join(
            f'<span title="max activation {v:.3g}" style="display:inline-block;margin:1px 3px;padding:0 4px;'
            f'border:1px solid #ccc;border-radius:3px">{escape(top.name(f))} <b>{s:.2f}</b></span>'
            for f, v, s in zip(top.features[i], top.values[i], top.scores[i])
        )
        parts.append(text_block_html(text, top.summary(i), chips or "<i>none above threshold</i>"))
    return "".join(parts)


def features_table(descriptions: dict[int, str], density=None):
    """Chosen features, one row each: index, firing density (if given) and description."""
    head = "<th>feature</th>" + ("<th>density</th>" if density is not None else "") + "<th>what it is</th>"
    rows = "".join(
        f"<tr><td>f{f}</td>"
        + (f"<td>{float(density[f]):.2e}</td>" if density is not None else "")
        + f"<td style='text-align:left'>{escape(d)}</td></tr>"
        for f, d in descriptions.items()
    )
    return as_html(f"<table><tr>{head}</tr>{rows}</table>")


def text_block_html(text: str, summary: str, body: str, margin_px: int = 6) -> str:
    """One text of a per-text view: the text, its active-latent summary, then `body`."""
    return (
        f'<div style="margin:{margin_px}px 0"><code>{escape(text)}</code><br>'
        f'<span class="saelib-active">{summary}</span><br>{body}</div>'
    )


def feature_contexts_html(contexts) -> str:
    """A `FeatureContexts`: one row per context, the firing token outlined."""
    if not contexts.contexts:
        return f"<b>f{contexts.feature}</b>: never fired on the stored tokens"
    rows = []
    for c in contexts.contexts:
        values = np.zeros(len(c.tokens), dtype=np.float32)
        values[c.index] = c.value
        rows.append(
            f'<tr><td style="text-align:right;padding-right:8px">{c.value:.3g}</td>'
            f"<td>{tokens_html(c.tokens, values, mark=c.index)}</td></tr>"
        )
    return f"<b>f{contexts.feature}</b> max-activating contexts<table>{''.join(rows)}</table>"


def logit_lens_html(lens) -> str:
    """A `LogitLens`: promoted and suppressed tokens side by side."""

    def column(items):
        return "".join(
            f"<tr><td><code>{escape(printable_token(t))}</code></td><td>{s:+.3f}</td></tr>" for t, s in items
        )

    return (
        f"<b>f{lens.feature}</b> logit lens<table><tr><th>promotes</th><th>suppresses</th></tr><tr>"
        f"<td><table>{column(lens.promoted)}</table></td><td><table>{column(lens.suppressed)}</table></td>"
        "</tr></table>"
    )


def concept_labels_html(labels) -> str:
    """A `ConceptLabels`: one row per (concept, feature) with both AUROCs and a tick if labelled."""
    body = "".join(
        f"<tr><td>{escape(r.concept)}</td><td>f{r.feature}</td><td>{r.train_auroc:.3f}</td>"
        f"<td><b>{r.test_auroc:.3f}</b></td><td>{'✓' if r.test_auroc >= labels.min_auroc else ''}</td></tr>"
        for r in labels.rows
    )
    return (
        f"<b>Concept labels</b> (chosen on {labels.n_train} train texts, AUROC reported on {labels.n_test} "
        f"held-out texts)<table><tr><th>concept</th><th>feature</th><th>train AUROC</th>"
        f"<th>held-out AUROC</th><th>label</th></tr>{body}</table>"
    )


def steering_html(steering) -> str:
    """A `Steering`: the prompt's continuation before and after the intervention, in one monospace
    column so the two continuations start at the same place; says so when nothing changed."""
    prompt = escape(steering.prompt)
    cell = 'style="font-family:monospace;white-space:pre-wrap;text-align:left;padding:1px 6px"'
    rows = "".join(
        f"<tr><td style='text-align:left;white-space:nowrap;padding:1px 6px'>{escape(label)}</td>"
        f"<td {cell}>{prompt}<b>{escape(text)}</b></td></tr>"
        for label, text in (("before", steering.before), (steering.intervention, steering.after))
    )
    note = "" if steering.changed else f"<p><i>{escape(steering.no_change)}</i></p>"
    return f"<b>{escape(steering.intervention)}</b><table>{rows}</table>{note}"


def steering_sweep_html(sweep) -> str:
    """A `SteeringSweep`: its plot beside a table of alpha and log-prob, the best row in bold."""
    best = sweep.best_alpha
    rows = "".join(
        f"<tr{' style=font-weight:bold' if a == best else ''}><td>{a:.3g}</td><td>{lp:.3f}</td></tr>"
        for a, lp in zip(sweep.alphas, sweep.logprobs)
    )
    table = f"<table><tr><th>alpha</th><th>log-prob / token</th></tr>{rows}</table>"
    return (
        f"<b>Steering sweep: {escape(sweep.name)}</b> after <code>{escape(sweep.prompt)}</code>: mean "
        f"log-prob per token of {sweep.n_texts} held-out {escape(sweep.concept)} sentences. Best alpha "
        f"<b>{best:.3g}</b> ({sweep.gain:+.3f} per token over no steering)."
        f'<div style="display:flex;gap:24px;align-items:center">{figure_img(sweep.figure())}{table}</div>'
    )


def figure_img(fig, dpi: int = 90) -> str:
    """A matplotlib figure as an inline <img> (base64 PNG), so a page needs no other file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


# ---- notebook tables --------------------------------------------------------------------------
def corpus_table(stats: dict):
    """Counts per source and per concept (from `corpus_stats`), as an HTML table."""
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:,}</td></tr>" for k, v in stats["sources"].items())
    concepts = ", ".join(f"{escape(k)} ({v})" for k, v in stats.get("concepts", {}).items())
    return as_html(
        f"<p><b>{stats['n_texts']:,} texts</b>, {stats['mean_chars']:.0f} characters on average</p>"
        f"<table><tr><th>source</th><th>texts</th></tr>{rows}</table>"
        + (f"<p><b>{len(stats['concepts'])} concepts:</b> {concepts}</p>" if concepts else "")
    )


def corpus_examples(docs, max_chars: int = 240):
    """The first document of each source, shortened."""
    first = {}
    for doc in docs:
        first.setdefault(doc.source, doc.text)
    rows = "".join(
        f"<tr><td>{escape(source)}</td><td style='text-align:left'>"
        "<pre style='white-space:pre-wrap;margin:0'>"
        f"{escape(text[:max_chars])}{'…' if len(text) > max_chars else ''}</pre></td></tr>"
        for source, text in first.items()
    )
    return as_html(f"<table><tr><th>source</th><th>example</th></tr>{rows}</table>")


METRIC_ROWS = (
    ("fvu", "FVU (1 - explained variance)", "{:.3f}"),
    ("mse", "MSE (raw activations)", "{:.4g}"),
    ("l0", "L0 (active latents per token)", "{:.1f}"),
    ("dead_frac", "dead latents", "{:.1%}"),
    ("dense_frac", "dense latents (fire on > 10% of tokens)", "{:.1%}"),
    ("ce_clean", "CE loss, clean", "{:.3f}"),
    ("ce_sae", "CE loss, SAE spliced in", "{:.3f}"),
    ("ce_zero", "CE loss, zero-ablated", "{:.3f}"),
    ("kl_sae", "KL(clean || SAE)", "{:.4f}"),
    ("ce_loss_recovered", "CE-loss recovered", "{:.3f}"),
    ("sparse_probe_acc_k1", "1-sparse probing accuracy (concepts, held out)", "{:.3f}"),
    ("sparse_probe_acc_k5", "5-sparse probing accuracy (concepts, held out)", "{:.3f}"),
    ("absorption_rate", "first-letter full-absorption rate (SAEBench)", "{:.3f}"),
)


def metrics_table(metrics: dict):
    """The headline metrics (from `evaluate`) as an HTML table; rows absent from `metrics` are skipped."""
    rows = "".join(
        f"<tr><td style='text-align:left'>{label}</td><td>{fmt.format(metrics[key])}</td></tr>"
        for key, label, fmt in METRIC_ROWS
        if metrics.get(key) is not None
    )
    return as_html(f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")


def show_source(*objects):
    """The real source code of functions or methods, as a highlighted Markdown block."""
    import inspect

    from IPython.display import Markdown

    return Markdown("\n\n".join(f"```python\n{inspect.getsource(obj)}```" for obj in objects))
