"""Pictures of features: coloured tokens and heatmaps as HTML (fast enough for a slider), and
matplotlib figures for histograms, densities and text overlap.

HTML is used wherever a widget redraws, because building a string takes microseconds while
rendering a matplotlib figure takes ~100 ms. Figures are made through pyplot (so Jupyter's inline
backend registers its PNG formatter) and closed at once, so returning one from a notebook cell
shows it exactly once.
"""
from __future__ import annotations

import html

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

HIGHLIGHT_RGB = (255, 140, 0)  # orange: one colour for "this token activates the feature"


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure pyplot does not keep: shown by the cell's return value only, never twice."""
    fig = plt.figure(figsize=figsize)
    plt.close(fig)
    return fig


def _token_text(token: str) -> str:
    """Escape a token for HTML and make whitespace visible."""
    return html.escape(token).replace("\n", "↵").replace("\t", "⇥") or "∅"


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
        name = f"f{feature}" + (f" {html.escape(labels[feature])}" if labels and feature in labels else "")
        cells = "".join(
            f'<td style="background:{_shade(float(v), vmax)};text-align:right;padding:2px 4px">'
            f'{"" if v <= 0 else f"{v:.2g}"}</td>'
            for v in column
        )
        rows.append(f'<tr><th style="text-align:left;padding:2px 4px">{name}</th>{cells}</tr>')
    return (
        '<table style="border-collapse:collapse;font-size:12px">'
        f"<tr><th></th>{head}</tr>{''.join(rows)}</table>"
    )


def overlap_figure(shared, names: list[str], vmax: int, title: str) -> Figure:
    """A text × text heatmap of shared feature counts; near-zero off the diagonal means distinct features."""
    matrix = np.asarray(shared, dtype=np.float32)
    fig = new_figure((1.6 + 1.1 * len(names), 1.2 + 0.9 * len(names)))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=vmax, cmap="Blues")
    short = [n if len(n) <= 24 else n[:22] + "…" for n in names]
    ax.set_xticks(range(len(names)), short, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), short)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center",
                    color="white" if matrix[i, j] > 0.6 * vmax else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def histogram_figure(edges, counts, title: str, figsize=(4.0, 2.4)) -> Figure:
    """Histogram of a feature's nonzero activations on log-spaced bins (x axis is log scale)."""
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    fig = new_figure(figsize)
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:orange")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on narrow ranges
    nonzero = np.nonzero(counts)[0]
    if len(nonzero):
        ax.set_xlim(edges[nonzero[0]], edges[nonzero[-1] + 1])
    ax.set_xlabel("activation (when active)")
    ax.set_ylabel("tokens")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def density_figure(density, marked: dict[int, float] | None = None, figsize=(5.0, 2.6)) -> Figure:
    """Histogram of log10 firing density over all features; dead features are counted apart.

    `marked` draws a vertical line per chosen feature so a dashboard shows where it sits."""
    density = np.asarray(density, dtype=np.float64)
    alive = density[density > 0]
    fig = new_figure(figsize)
    ax = fig.add_subplot()
    if len(alive):
        ax.hist(np.log10(alive), bins=40, color="tab:blue")
    for feature, value in (marked or {}).items():
        if value > 0:
            ax.axvline(np.log10(value), color="tab:red", lw=1)
            ax.text(np.log10(value), ax.get_ylim()[1] * 0.9, f"f{feature}", color="tab:red", fontsize=8)
    ax.set_xlabel("log10 firing density (fraction of tokens)")
    ax.set_ylabel("features")
    ax.set_title(f"{len(alive)} alive, {len(density) - len(alive)} never fired", fontsize=10)
    fig.tight_layout()
    return fig
