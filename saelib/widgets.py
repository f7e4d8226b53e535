"""An ipywidgets explorer over a few texts: threshold and top-k sliders, a feature picker, a text box.

The texts are encoded once (`analysis.encode_texts`); a slider tick only slices the cached
latents and rebuilds an HTML string, so it redraws in milliseconds (`last_redraw_ms`). Only the
**Update** button runs the model again, on the text box's lines; until then a hint says the box
holds edits that are not shown. (A widget's text area keeps its keys: Enter and Shift+Enter type a
newline there, so a button, not a key, applies the texts.)

The controls stay put: the view scrolls inside a fixed-height box, the picked feature's colouring
on top. Displayed, the explorer sends one output whose bundle holds the widget and, as
`text/html`, a static copy of its first view: a live front end shows only the widget, while a
headless run (papermill, nbconvert), which keeps no widget output, shows the static copy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import ipywidgets as widgets
from IPython.display import display

from saelib import analysis, html

MAX_TOP_K = 50  # slider range; more features per text do not fit on a screen
VIEW_HEIGHT = "420px"  # the view scrolls inside this, so the controls above it stay on screen
EDITED_HINT = "Edited, not shown yet: press Update"


class Explorer:
    """Interactive view of which features fire on which tokens; see the module docstring."""

    def __init__(
        self,
        lm,
        sae,
        texts: Sequence[str] | None = None,
        threshold: float = 0.0,
        top_k: int = 10,
        labels: analysis.ConceptLabels | dict[int, str] | None = None,
        max_length: int = 128,
        density=None,
    ):
        """`density` (per-latent firing frequency) ranks features by specificity, as `top_features` does."""
        self.lm, self.sae, self.max_length = lm, sae, max_length
        self.labels = analysis.label_names(labels)
        d_sae = analysis.d_sae_of(sae)
        self.density = None if density is None else analysis.check_density(density, d_sae)
        analysis.check_threshold(threshold)
        analysis.check_top_k(top_k, d_sae)
        self.acts = analysis.encode_texts(lm, sae, texts, max_length)
        self.last_redraw_ms = float("nan")
        self.last_encode_ms = float("nan")

        self.threshold = widgets.FloatSlider(
            value=threshold, min=0.0, description="threshold", continuous_update=True, readout_format=".3g"
        )
        self.top_k = widgets.IntSlider(
            value=top_k, min=1, max=min(MAX_TOP_K, d_sae), description="top k", continuous_update=True
        )
        self.feature = widgets.Dropdown(description="feature")
        self.text = widgets.Textarea(
            value="\n".join(self.acts.texts),
            description="texts",
            placeholder="one text per line, then press Update",
            continuous_update=True,  # every edit reaches the kernel, so the hint can follow it
            layout=widgets.Layout(width="75%", height="4.5em"),
        )
        self.update = widgets.Button(description="Update", button_style="primary", tooltip="encode the texts")
        self.update.add_class("saelib-explorer-update")
        self.hint = widgets.Label()
        self.hint.add_class("saelib-explorer-hint")
        self.view = widgets.HTML(layout=widgets.Layout(height=VIEW_HEIGHT, overflow="auto"))
        self.view.add_class("saelib-explorer-view")
        self.status = widgets.Label()
        self.status.add_class("saelib-explorer-status")
        self._fit_controls_to_texts()
        for control in (self.threshold, self.top_k, self.feature):
            control.observe(self.redraw, names="value")
        self.text.observe(self._on_edit, names="value")
        self.update.on_click(self._on_update)
        self.redraw()
        self.controls = widgets.HBox([self.threshold, self.top_k, self.feature])
        self.controls.add_class("saelib-explorer-controls")
        self.widget = widgets.VBox(
            [
                self.controls,
                widgets.HBox([self.text, widgets.VBox([self.update, self.hint])]),
                self.status,
                self.view,
            ]
        )

    # ---- state that depends on the texts ------------------------------------------------------
    def _fit_controls_to_texts(self) -> None:
        """Slider range and feature choices follow the encoded texts (set once per encode)."""
        peak = float(self.acts.text_max.max())
        self.threshold.max = max(peak, 1e-6)
        self.threshold.step = self.threshold.max / 200
        strongest = self.acts.text_max.max(dim=0).values
        values, features = strongest.topk(min(MAX_TOP_K, self.acts.d_sae))
        options = [
            (f"{analysis.feature_name(f, self.labels)} · {v:.3g}", f)
            for f, v in zip(features.tolist(), values.tolist())
            if v > 0
        ]
        options = options or [("no active feature", features[0].item())]
        picked = self.feature.value  # read first: assigning `options` resets `value`
        self.feature.options = options
        self.feature.value = picked if picked in [f for _, f in options] else options[0][1]

    def _typed_texts(self) -> list[str]:
        return [line for line in self.text.value.splitlines() if line.strip()]

    def _on_edit(self, change) -> None:
        """Typing only updates the hint; the model runs on Update."""
        self.hint.value = "" if self._typed_texts() == self.acts.texts else EDITED_HINT

    def _on_update(self, button=None) -> None:
        texts = self._typed_texts()
        if not texts:
            self.status.value = "Enter at least one non-empty line of text."
            return
        start = time.perf_counter()
        self.acts = analysis.encode_texts(self.lm, self.sae, texts, self.max_length)
        self.last_encode_ms = 1000 * (time.perf_counter() - start)
        self.hint.value = ""
        self._fit_controls_to_texts()
        self.redraw()

    # ---- drawing -------------------------------------------------------------------------
    def render(self) -> str:
        """The current view as HTML: every text coloured by the picked feature, then per text its top
        features, active fraction and token heatmap. Reads cached latents only."""
        current = analysis.top_features(
            self.acts, self.threshold.value, self.top_k.value, self.labels, self.density
        )
        feature = self.feature.value
        name = analysis.feature_name(feature, self.labels)
        parts = [
            html.coloured_texts_html(self.acts.feature_values(feature), name),
            f"<br><b>threshold {current.threshold:.3g} · top k {current.top_k}</b> "
            f"(ranked by {current.ranking})",
        ]
        for i, text in enumerate(self.acts.texts):
            features = current.features[i]
            tokens, latents = self.acts.scored(i)
            heatmap = (
                html.heatmap_html(tokens, features, latents[:, features].numpy(), self.labels)
                if features
                else "<i>no feature above the threshold</i>"
            )
            parts.append(html.text_block_html(text, current.summary(i), heatmap, margin_px=8))
        return '<div style="line-height:1.3">' + "".join(parts) + "</div>"

    def redraw(self, change=None) -> None:
        """Slider/picker callback: rebuild the view from the cache and time it."""
        start = time.perf_counter()
        self.view.value = self.render()
        self.last_redraw_ms = 1000 * (time.perf_counter() - start)
        encode = "" if math.isnan(self.last_encode_ms) else f", last encode {self.last_encode_ms:.0f} ms"
        self.status.value = f"redraw {self.last_redraw_ms:.1f} ms{encode}"

    def _ipython_display_(self) -> None:
        bundle = self.widget._repr_mimebundle_()
        bundle["text/html"] = (
            "<p><i>Static copy of the Explorer as first drawn; run the notebook in Jupyter to move "
            f"the sliders.</i></p>{self.render()}"
        )
        display(bundle, raw=True)
