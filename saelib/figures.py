"""Every matplotlib figure of saelib, and the question each answers. Each returns its Figure, so a
notebook cell shows it and a report can save it.

    token_norms         why is position 0 left out? (the sink token's norm towers over the words)
    norm_histogram      how are activation norms spread in the store? (a long tail: a few huge tokens)
    LiveCurves          is training converging? (loss, FVU, L0, dead % while it runs)
    density_histogram   how many latents are dead, rare or dense? (from `evaluate`'s metrics)
    frontier_plot       how does this SAE trade sparsity (L0) for reconstruction (FVU) against others?
    density_figure      where do chosen features sit among all firing densities? (`FeatureStats.density_plot`)
    histogram_figure    how strongly does one feature fire when it fires? (`FeatureStats.histogram`)
    overlap_figure      do different texts use different features? (`analysis.show_overlap`)
    steering_sweep_figure  which steering strength makes a concept most likely? (`SteeringSweep.figure`)

Tables and other HTML are in `saelib.html`.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from saelib.metrics import log10_density


def plain_log_axis(axis) -> None:
    """Log-axis ticks at 1, 2, 5 × powers of ten, written as plain numbers (0.05, 2, 500): a narrow range
    still gets several labels, and no minor labels collide."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, squeeze: bool = True):
    """(figure, axes) laid out tightly whenever drawn. Made through pyplot, so Jupyter's inline backend
    registers its PNG formatter, and closed at once, so pyplot does not show it again at the end of
    the cell: a figure returned by a notebook cell (also under papermill) shows exactly once."""
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=squeeze, layout="tight")
    plt.close(fig)
    return fig, axes


# ---- collection ----------------------------------------------------------------------------------
def token_norms(sample) -> Figure:
    """Per-token activation norms of a few texts (log scale): position 0, the sink token, towers over the
    words that follow it."""
    fig, axes = new_figure((4 * len(sample.acts), 3), ncols=len(sample.acts), squeeze=False)
    for ax, acts, tokens in zip(axes[0], sample.acts, sample.tokens):
        norms = acts.norm(dim=-1).numpy()
        ax.bar(range(len(norms)), norms, color=["tab:red"] + ["tab:blue"] * (len(norms) - 1))
        ax.set_yscale("log")
        ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=90, fontsize=8)
        median = float(acts[1:].norm(dim=-1).median())
        ax.set_title(f"{tokens[0]!r} (sink) {norms[0]:,.0f} vs median word {median:,.0f}", fontsize=9)
    axes[0][0].set_ylabel("activation norm")
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
    fig, ax = new_figure((6, 3.2))
    ax.hist(norms, bins=bins, color="C0")
    ax.set_yscale("log")
    ax.axvline(store.mean_norm, color="C3", linestyle="--", label=f"mean {store.mean_norm:.1f}")
    ax.set_xlabel("activation norm")
    ax.set_ylabel("tokens")
    ax.set_title(f"{store.model_name} layer {store.layer} {store.site}: {len(norms):,} tokens")
    ax.legend()
    return fig


# ---- training and evaluation ------------------------------------------------------------------------
CURVES = (
    ("loss", "loss", "log"),
    ("fvu", "FVU", "log"),
    ("l0", "L0", "linear"),
    ("dead_frac", "dead %", "linear"),
)


class LiveCurves:
    """Training callback that redraws loss / FVU / L0 / dead% in one Jupyter output.

    Pass it as `train(..., callback=LiveCurves())`. Redraws at most every `min_seconds`, and always
    after `close()`; outside IPython the figure is drawn at the end. Rendering the PNG takes ~0.8 s on a
    slow CPU, so the interval stretches to keep redraws under a tenth of the training time.
    """

    def __init__(self, min_seconds: float = 2.0, title: str | None = None):
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {key: [] for key, _, _ in CURVES}
        self.min_seconds = min_seconds
        self.fig, axes = new_figure((13, 2.8), ncols=len(CURVES))  # shown through the display handle only
        self.axes = dict(zip([key for key, _, _ in CURVES], axes))
        if title:
            self.fig.suptitle(title)
        self._handle = None
        self._last_draw = 0.0
        self._interval = min_seconds

    def __call__(self, step: int, stats: dict) -> None:
        self.steps.append(step)
        for key in self.history:
            value = stats[key]
            self.history[key].append(100 * value if key == "dead_frac" else value)
        if time.monotonic() - self._last_draw >= self._interval:
            self._draw()

    def close(self) -> Figure:
        """Final redraw; returns the figure."""
        self._draw()
        return self.fig

    def _draw(self) -> None:
        started = time.monotonic()
        for key, label, yscale in CURVES:
            ax = self.axes[key]
            ax.clear()
            ax.plot(self.steps, self.history[key], color="C0")
            ax.set_title(label)
            ax.set_xlabel("step")
            if yscale == "log" and all(v > 0 for v in self.history[key]):
                ax.set_yscale("log")
            else:
                ax.ticklabel_format(axis="y", useOffset=False)  # "32.0", never "+3.199e1" with "0.01"
        self._show()
        self._last_draw = time.monotonic()
        self._interval = max(self.min_seconds, 9 * (self._last_draw - started))

    def _show(self) -> None:
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
    fig, ax = new_figure((6, 3.2))
    ax.hist(values, bins=bins, color="C0")
    ax.axvline(np.log10(0.1), color="C3", linestyle="--", label="dense (10% of tokens)")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(f"Feature density ({n_dead} of {len(metrics['feature_density'])} latents never fired)")
    ax.legend(loc="upper left")
    return fig


def frontier_plot(metrics: dict | list[dict], reference_points: list[dict] | None = None) -> Figure:
    """L0 (log x) against FVU: lower-left is better. `metrics` are ours (highlighted); each
    reference point is a dict with l0, fvu and an optional label."""
    ours = [metrics] if isinstance(metrics, dict) else list(metrics)
    fig, ax = new_figure((5.5, 4))
    for point in reference_points or []:
        ax.scatter(point["l0"], point["fvu"], color="0.6", s=25)
        if point.get("label"):
            ax.annotate(
                point["label"],
                (point["l0"], point["fvu"]),
                fontsize=8,
                color="0.4",
                xytext=(4, 2),
                textcoords="offset points",
            )
    for point in ours:
        ax.scatter(point["l0"], point["fvu"], color="C3", s=80, marker="*", zorder=3)
        ax.annotate(
            point.get("label", point.get("arch", "ours")),
            (point["l0"], point["fvu"]),
            xytext=(5, 4),
            textcoords="offset points",
            color="C3",
        )
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("FVU (fraction of variance unexplained)")
    ax.set_title("Sparsity - reconstruction frontier")
    ax.grid(alpha=0.3, which="both")
    return fig


def arch_frontier_plot(points: list[dict]) -> Figure:
    """FVU (lower is better) and CE-loss recovered (higher is better) against L0, one point per arch."""
    metric_names = [
        ("fvu", "FVU (fraction of variance unexplained)"),
        ("ce_loss_recovered", "CE-loss recovered"),
    ]
    fig, axes = new_figure((10, 4), ncols=2)
    for ax, (name, label) in zip(axes, metric_names):
        for index, point in enumerate(points):
            if point.get(name) is None:
                continue
            ax.scatter(point["l0"], point[name], color=f"C{index}", s=60, label=point["arch"])
            ax.annotate(point["arch"], (point["l0"], point[name]), xytext=(5, 3), textcoords="offset points")
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("Reconstruction: lower-left is better")
    axes[1].set_title("Downstream: upper-left is better")
    return fig


LABEL_STEPS = 6  # heights the density plot's feature labels cycle through


# ---- features ------------------------------------------------------------------------------------
def density_figure(density, marked: dict[int, float] | None = None, figsize=(5.0, 2.6)) -> Figure:
    """Histogram of log10 firing density over all features; dead features are counted apart.

    `marked` draws a vertical line per chosen feature so a dashboard shows where it sits; the labels of
    neighbouring lines are stepped down in turn so they never print over each other."""
    density = np.asarray(density, dtype=np.float64)
    alive = density[density > 0]
    fig, ax = new_figure(figsize)
    if len(alive):
        ax.hist(np.log10(alive), bins=40, color="tab:blue")
    top = ax.get_ylim()[1]
    shown = sorted((np.log10(value), feature) for feature, value in (marked or {}).items() if value > 0)
    for step, (x, feature) in enumerate(shown):
        ax.axvline(x, color="tab:red", lw=1)
        height = top * (0.95 - 0.11 * (step % LABEL_STEPS))
        box = dict(facecolor="white", alpha=0.85, edgecolor="none", pad=1)
        ax.text(x, height, f"f{feature}", color="tab:red", fontsize=8, va="top", bbox=box)
    ax.set_xlabel("log10 firing density (fraction of tokens)")
    ax.set_ylabel("features")
    ax.set_title(f"{len(alive)} alive, {len(density) - len(alive)} never fired", fontsize=10)
    return fig


def histogram_figure(edges, counts, title: str, figsize=(4.0, 2.4)) -> Figure:
    """Histogram of a feature's nonzero activations on log-spaced bins (x axis is log scale)."""
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    fig, ax = new_figure(figsize)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:orange")
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    nonzero = np.nonzero(counts)[0]
    if len(nonzero):
        ax.set_xlim(edges[nonzero[0]], edges[nonzero[-1] + 1])
    ax.set_xlabel("activation (when active)")
    ax.set_ylabel("tokens")
    ax.set_title(title, fontsize=10)
    return fig


def overlap_figure(shared, names: list[str], vmax: int, title: str) -> Figure:
    """A text × text heatmap of shared feature counts; near-zero off the diagonal means distinct features."""
    matrix = np.asarray(shared, dtype=np.float32)
    fig, ax = new_figure((1.6 + 1.1 * len(names), 1.2 + 0.9 * len(names)))
    image = ax.imshow(matrix, vmin=0.0, vmax=vmax, cmap="Blues")
    short = [n if len(n) <= 24 else n[:22] + "…" for n in names]
    ax.set_xticks(range(len(names)), short, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), short)
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if matrix[i, j] > 0.6 * vmax else "black"
            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", color=color)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=10)
    return fig


def steering_sweep_figure(sweep, figsize=(4.2, 2.6)) -> Figure:
    """Log-prob per token of the concept's sentences against the steering strength; the best one marked."""
    fig, ax = new_figure(figsize)
    ax.plot(sweep.alphas, sweep.logprobs, marker="o", color="C0")
    ax.axvline(sweep.best_alpha, color="C3", linestyle="--", lw=1, label=f"best alpha {sweep.best_alpha:.3g}")
    ax.set_xlabel("alpha (added multiple of the decoder direction)")
    ax.set_ylabel("log-prob / token")
    ax.set_title(f"Steering with {sweep.name}", fontsize=10)
    ax.legend(fontsize=8)
    return fig
