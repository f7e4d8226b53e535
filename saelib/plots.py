"""Matplotlib figures for the notebooks: live training curves, feature density, the L0-FVU frontier,
activation norms. Every function returns the Figure so notebooks can save it into the report.
"""
from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from saelib.metrics import log10_density

CURVES = (("loss", "loss", "log"), ("fvu", "FVU", "log"), ("l0", "L0", "linear"), ("dead_frac", "dead %", "linear"))


class LiveCurves:
    """Training callback that redraws loss / FVU / L0 / dead% in one Jupyter output.

    Pass it as `train(..., callback=LiveCurves())`. Redraws at most every `min_seconds`, and always
    after `close()`; outside IPython (or headless under papermill) the figure is drawn at the end.
    """

    def __init__(self, min_seconds: float = 2.0, title: str | None = None):
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {key: [] for key, _, _ in CURVES}
        self.min_seconds = min_seconds
        self.fig, axes = plt.subplots(1, len(CURVES), figsize=(13, 2.8))
        self.axes = dict(zip([key for key, _, _ in CURVES], axes))
        if title:
            self.fig.suptitle(title)
        plt.close(self.fig)  # shown through the display handle only, never twice
        self._handle = None
        self._last_draw = 0.0

    def __call__(self, step: int, stats: dict) -> None:
        self.steps.append(step)
        for key in self.history:
            value = stats[key]
            self.history[key].append(100 * value if key == "dead_frac" else value)
        if time.monotonic() - self._last_draw >= self.min_seconds:
            self._draw()

    def close(self) -> Figure:
        """Final redraw; returns the figure."""
        self._draw()
        return self.fig

    def _draw(self) -> None:
        for key, label, yscale in CURVES:
            ax = self.axes[key]
            ax.clear()
            ax.plot(self.steps, self.history[key], color="C0")
            ax.set_title(label)
            ax.set_xlabel("step")
            if yscale == "log" and all(v > 0 for v in self.history[key]):
                ax.set_yscale("log")
        self.fig.tight_layout()
        self._last_draw = time.monotonic()
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        if self._handle is None:
            self._handle = display(self.fig, display_id=True)
        else:
            self._handle.update(self.fig)


def density_histogram(metrics: dict, bins: int = 50) -> Figure:
    """Histogram of log10 firing frequency per latent; dead latents are counted in the title."""
    values, n_dead = log10_density(metrics)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=bins, color="C0")
    ax.axvline(np.log10(0.1), color="C3", linestyle="--", label="dense (10% of tokens)")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(f"Feature density ({n_dead} of {len(metrics['feature_density'])} latents never fired)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    plt.close(fig)  # shown once, as the cell's value
    return fig


def frontier_plot(metrics: dict | list[dict], reference_points: list[dict] | None = None) -> Figure:
    """L0 (log x) against FVU: lower-left is better. `metrics` are ours (highlighted); each
    reference point is a dict with l0, fvu and an optional label."""
    ours = [metrics] if isinstance(metrics, dict) else list(metrics)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for point in reference_points or []:
        ax.scatter(point["l0"], point["fvu"], color="0.6", s=25)
        if point.get("label"):
            ax.annotate(point["label"], (point["l0"], point["fvu"]), fontsize=8, color="0.4",
                        xytext=(4, 2), textcoords="offset points")
    for point in ours:
        ax.scatter(point["l0"], point["fvu"], color="C3", s=80, marker="*", zorder=3)
        ax.annotate(point.get("label", point.get("arch", "ours")), (point["l0"], point["fvu"]),
                    xytext=(5, 4), textcoords="offset points", color="C3")
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("FVU (fraction of variance unexplained)")
    ax.set_title("Sparsity - reconstruction frontier")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    plt.close(fig)  # shown once, as the cell's value
    return fig


def norm_histogram(store, bins: int = 60, max_tokens: int = 200_000) -> Figure:
    """Histogram of activation norms in the store (first `max_tokens` rows), log-scaled counts."""
    norms, seen = [], 0
    for shard in store.shards():
        norms.append(shard.acts.norm(dim=1))
        seen += len(shard.acts)
        if seen >= max_tokens:
            break
    norms = torch.cat(norms)[:max_tokens].numpy()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(norms, bins=bins, color="C0")
    ax.set_yscale("log")
    ax.axvline(store.mean_norm, color="C3", linestyle="--", label=f"mean {store.mean_norm:.1f}")
    ax.set_xlabel("activation norm")
    ax.set_ylabel("tokens")
    ax.set_title(f"{store.model_name} layer {store.layer} {store.site}: {len(norms):,} tokens")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)  # shown once, as the cell's value
    return fig


def corpus_table(stats: dict):
    """Counts per source and per concept, as an HTML table that also renders under papermill."""
    from html import escape

    from IPython.display import HTML

    rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:,}</td></tr>" for k, v in stats["sources"].items())
    concepts = ", ".join(f"{escape(k)} ({v})" for k, v in stats.get("concepts", {}).items())
    return HTML(
        f"<p><b>{stats['n_texts']:,} texts</b>, {stats['mean_chars']:.0f} characters on average</p>"
        f"<table><tr><th>source</th><th>texts</th></tr>{rows}</table>"
        + (f"<p><b>{len(stats['concepts'])} concepts:</b> {concepts}</p>" if concepts else "")
    )


def corpus_examples(docs, max_chars: int = 240):
    """The first document of each source, shortened."""
    from html import escape

    from IPython.display import HTML

    first = {}
    for doc in docs:
        first.setdefault(doc.source, doc.text)
    rows = "".join(
        f"<tr><td>{escape(source)}</td><td style='text-align:left'><pre style='white-space:pre-wrap;margin:0'>"
        f"{escape(text[:max_chars])}{'…' if len(text) > max_chars else ''}</pre></td></tr>"
        for source, text in first.items()
    )
    return HTML(f"<table><tr><th>source</th><th>example</th></tr>{rows}</table>")


def token_norms(sample) -> plt.Figure:
    """Per-token activation norms of a few texts (log scale): the first token towers over the rest."""
    fig, axes = plt.subplots(1, len(sample.acts), figsize=(4 * len(sample.acts), 3), squeeze=False)
    for ax, acts, tokens in zip(axes[0], sample.acts, sample.tokens):
        norms = acts.norm(dim=-1).numpy()
        ax.bar(range(len(norms)), norms, color=["tab:red"] + ["tab:blue"] * (len(norms) - 1))
        ax.set_yscale("log")
        ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=90, fontsize=8)
        ax.set_title(f"first token {norms[0]:,.0f} vs median {float(acts[1:].norm(dim=-1).median()):,.0f}", fontsize=9)
    axes[0][0].set_ylabel("activation norm")
    fig.tight_layout()
    plt.close(fig)
    return fig


def show_source(*objects):
    """The real source code of functions or methods, as a highlighted Markdown block."""
    import inspect

    from IPython.display import Markdown

    return Markdown("\n\n".join(f"```python\n{inspect.getsource(obj)}```" for obj in objects))


METRIC_ROWS = (
    ("fvu", "FVU (1 - explained variance)", "{:.3f}"), ("mse", "MSE (raw activations)", "{:.4g}"),
    ("l0", "L0 (active latents per token)", "{:.1f}"), ("dead_frac", "dead latents", "{:.1%}"),
    ("dense_frac", "dense latents (fire on > 10% of tokens)", "{:.1%}"),
    ("ce_clean", "CE loss, clean", "{:.3f}"), ("ce_sae", "CE loss, SAE spliced in", "{:.3f}"),
    ("ce_zero", "CE loss, zero-ablated", "{:.3f}"), ("kl_sae", "KL(clean || SAE)", "{:.4f}"),
    ("ce_loss_recovered", "CE-loss recovered", "{:.3f}"),
)


def metrics_table(metrics: dict):
    """The headline metrics as an HTML table (rows absent from `metrics` are skipped)."""
    from IPython.display import HTML

    rows = "".join(f"<tr><td style='text-align:left'>{label}</td><td>{fmt.format(metrics[key])}</td></tr>"
                   for key, label, fmt in METRIC_ROWS if metrics.get(key) is not None)
    return HTML(f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
