"""The explorer's logic without a browser: redraws read the cache, only the text box runs the model."""

from __future__ import annotations

import re

import pytest
import torch

from saelib import analysis, widgets
from saelib.errors import BadArgument

TEXTS = ["Dogs are man's best friend.", "Neural networks process information.", "London is a major city."]


@pytest.fixture(scope="module")
def sae(text_sae):
    return text_sae


def test_explorer_redraws_from_cache_and_only_text_box_encodes(tiny_llama, sae, monkeypatch):
    explorer = widgets.Explorer(tiny_llama, sae, TEXTS, threshold=0.0, top_k=5)
    calls = []
    original = tiny_llama.activations
    monkeypatch.setattr(tiny_llama, "activations", lambda *a, **k: calls.append(1) or original(*a, **k))

    def listed(view: str) -> list[int]:
        return [int(n) for n in re.findall(r"(\d+) listed", view)]

    assert listed(explorer.view.value) == [5, 5, 5]
    explorer.top_k.value = 2
    assert listed(explorer.view.value) == [2, 2, 2]
    explorer.threshold.value = explorer.threshold.max  # nothing exceeds the global maximum
    assert listed(explorer.view.value) == [0, 0, 0] and "0 of 96 latents active" in explorer.view.value
    explorer.feature.value = explorer.feature.options[-1][1]
    assert calls == [] and 0 < explorer.last_redraw_ms < 100
    assert f"redraw {explorer.last_redraw_ms:.1f} ms" == explorer.status.value
    explorer.text.value = "A single new line of text."  # typing alone runs nothing, the hint says so
    assert calls == [] and explorer.hint.value == widgets.EDITED_HINT
    explorer.update.click()
    assert len(calls) == 1 and explorer.acts.texts == ["A single new line of text."]
    assert "last encode" in explorer.status.value and explorer.hint.value == ""
    explorer.text.value = "A single new line of text.\n\n"  # blank lines do not count as an edit
    assert explorer.hint.value == ""
    explorer.text.value = "   "
    explorer.update.click()
    assert len(calls) == 1 and "non-empty" in explorer.status.value


def test_explorer_display_is_one_bundle_widget_with_static_fallback(tiny_llama, sae, monkeypatch):
    """A live front end renders the widget view; papermill/nbconvert keep the text/html copy."""
    shown = []
    monkeypatch.setattr(widgets, "display", lambda *objs, **kw: shown.append((objs, kw)))
    explorer = widgets.Explorer(tiny_llama, sae, TEXTS[:2], top_k=3)
    explorer._ipython_display_()
    [((bundle,), options)] = shown
    assert options == {"raw": True}
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id
    assert "3 listed" in bundle["text/html"] and "Static copy" in bundle["text/html"]


def test_view_puts_the_picked_feature_first_and_scrolls_under_the_controls(tiny_llama, sae):
    explorer = widgets.Explorer(tiny_llama, sae, TEXTS, top_k=3)
    view = explorer.render()
    assert view.index("on each text") < view.index("<code>Dogs")
    assert explorer.view.layout.overflow == "auto" and explorer.view.layout.height == widgets.VIEW_HEIGHT
    assert explorer.widget.children[-1] is explorer.view


def test_explorer_can_rank_by_specificity(tiny_llama, sae):
    plain = widgets.Explorer(tiny_llama, sae, TEXTS, top_k=1)
    strongest = analysis.top_features(plain.acts, top_k=1).features[0][0]
    density = torch.full((analysis.d_sae_of(sae),), 0.001)
    density[strongest] = 0.9  # fires everywhere: specificity ranking should pass it over
    ranked = widgets.Explorer(tiny_llama, sae, TEXTS, top_k=1, density=density)
    expected = analysis.top_features(ranked.acts, top_k=1, density=density).features[0][0]
    assert expected != strongest
    assert f"f{expected}" in ranked.render().split("<code>")[1]


def test_explorer_rejects_bad_settings_before_encoding(tiny_llama, sae):
    with pytest.raises(BadArgument, match="top_k"):
        widgets.Explorer(tiny_llama, sae, TEXTS, top_k=1000)
    with pytest.raises(BadArgument, match="threshold"):
        widgets.Explorer(tiny_llama, sae, TEXTS, threshold=-1.0)
    with pytest.raises(BadArgument, match="density"):
        widgets.Explorer(tiny_llama, sae, TEXTS, density=torch.ones(3))


def test_picked_feature_survives_new_texts_while_offered(tiny_llama, sae):
    explorer = widgets.Explorer(tiny_llama, sae, TEXTS, top_k=3)
    offered_after = [f for _, f in widgets.Explorer(tiny_llama, sae, TEXTS[:2]).feature.options]
    picked = next(f for _, f in explorer.feature.options[1:] if f in offered_after)  # not the default
    explorer.feature.value = picked
    explorer.text.value = "\n".join(TEXTS[:2])  # other options, the picked feature among them
    explorer.update.click()
    assert [f for _, f in explorer.feature.options] == offered_after
    assert explorer.feature.value == picked


def test_every_word_of_every_text_has_a_latent_row(tiny_llama, sae):
    """The tiny tokenizer has no BOS: the sink token saelib prepends is dropped, never a word ('Dogs')."""
    assert tiny_llama.tokenizer.bos_token_id is None and tiny_llama.sink_id is not None
    explorer = widgets.Explorer(tiny_llama, sae, TEXTS)
    for i, text in enumerate(TEXTS):
        tokens, latents = explorer.acts.scored(i)
        assert tiny_llama.tokenizer.convert_tokens_to_string(tokens) == text
        assert latents.shape[0] == len(tokens)
    first_word_column = explorer.render().split("<tr><th></th>")[1].split("</th>")[0]
    assert first_word_column.endswith(">" + explorer.acts.scored(0)[0][0]) and TEXTS[0].startswith("D")
