"""Every figure renders, and none stays open in pyplot (so a notebook cell shows it exactly once)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import torch
from conftest import ROOT, identity_sae

from saelib import figures
from saelib.collection import store_from_tensor
from saelib.metrics import evaluate


def test_plots_render(tmp_path):
    store = store_from_tensor(torch.randn(2000, 8), tmp_path / "acts")
    metrics = evaluate(identity_sae(8, signed=True), store, progress=False)
    metrics["feature_density"][0] = 0.0
    curves = figures.LiveCurves(min_seconds=0)
    for step in range(1, 4):
        curves(
            step, {"loss": 1 / step, "fvu": 0.5 / step, "l0": 30.0, "dead_frac": 0.01, "lr": 1e-3, "mse": 0.1}
        )
    figs = [
        curves.close(),
        figures.density_histogram(metrics),
        figures.frontier_plot(metrics, reference_points=[{"l0": 20, "fvu": 0.3, "label": "ref"}]),
        figures.norm_histogram(store),
    ]
    for fig in figs:
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
        fig.savefig(tmp_path / "fig.png")
    assert "never fired" in figs[1].axes[0].get_title()


def test_feature_figures_render_and_pyplot_keeps_none(tmp_path):
    plt.close("all")
    sample = SimpleNamespace(
        acts=[torch.rand(4, 8) + 1, torch.rand(3, 8) + 1], tokens=[list("abcd"), list("xyz")]
    )
    figs = [
        figures.token_norms(sample),
        figures.density_figure([0.0, 0.01, 0.2, 0.5], marked={2: 0.2}),
        figures.histogram_figure([0.1, 1.0, 10.0], [3, 0], title="f0"),
        figures.overlap_figure([[2, 1], [1, 2]], ["a", "b" * 30], vmax=2, title="shared"),
    ]
    assert plt.get_fignums() == []  # closed at once: only the returned object shows them
    for fig in figs:
        fig.savefig(tmp_path / "fig.png")
    assert len(figs[0].axes) == 2 and "'a' (sink)" in figs[0].axes[0].get_title()
    assert figs[1].axes[0].get_title() == "3 alive, 1 never fired"
    assert figs[2].axes[0].get_xlim() == (0.1, 1.0)  # zoomed to the bins that hold counts
    assert figs[3].axes[0].get_yticklabels()[1].get_text().endswith("…")


def test_analysis_and_html_import_no_plotting_or_widgets():
    """matplotlib is imported when a figure is drawn, not when saelib.analysis is imported."""
    code = "import sys, saelib.analysis, saelib.html; print({'matplotlib', 'ipywidgets'} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


def visible_tick_labels(fig, axis) -> list[str]:
    fig.canvas.draw()
    low, high = sorted(axis.get_view_interval())
    return [t.get_text() for t, v in zip(axis.get_ticklabels(), axis.get_ticklocs()) if low <= v <= high]


def test_axes_read_plainly():
    """No offset text on a flat L0 curve, several 1-2-5 labels on a one-decade log axis, and the density
    plot's labels of nearby features at different heights."""
    curves = figures.LiveCurves(min_seconds=0)
    for step, l0 in enumerate([31.9900, 31.9905, 31.9910], start=1):
        curves(step, {"loss": 1.0, "fvu": 0.5, "l0": l0, "dead_frac": 0.0})
    l0_labels = visible_tick_labels(curves.close(), curves.axes["l0"].yaxis)
    assert l0_labels and all(label.startswith("31.99") for label in l0_labels)  # not "0.0005" + an offset
    histogram = figures.histogram_figure([0.1, 0.3, 1.0], [3, 4], title="f0")
    assert visible_tick_labels(histogram, histogram.axes[0].xaxis) == ["0.1", "0.2", "0.5", "1"]
    frontier = figures.frontier_plot([{"l0": 8, "fvu": 0.3}, {"l0": 60, "fvu": 0.1}])
    assert "20" in visible_tick_labels(frontier, frontier.axes[0].xaxis)
    density = figures.density_figure([0.01, 0.0101, 0.0102, 0.5], marked={0: 0.01, 1: 0.0101, 2: 0.0102})
    heights = [text.get_position()[1] for text in density.axes[0].texts]
    assert len(set(heights)) == 3
