"""HTML renderers: shading, escaping, and the notebook tables."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from saelib import html


def test_tokens_and_heatmap_shade_by_activation_and_escape():
    markup = html.tokens_html(["<a>", "\n", ""], [2.0, 1.0, 0.0], mark=0)
    assert "&lt;a&gt;" in markup and "↵" in markup and "∅" in markup
    assert "rgba(255,140,0,1.00)" in markup and "rgba(255,140,0,0.50)" in markup  # shaded relative to the max
    assert markup.count("outline") == 1
    table = html.heatmap_html(["x", "y"], [4, 9], np.array([[1.0, 0.0], [0.5, 3.0]]), labels={9: "<cat>"})
    assert table.count("<tr>") == 3 and "f9 &lt;cat&gt;" in table
    texts = html.coloured_texts_html([(["a"], np.array([2.0])), (["b"], np.array([4.0]))], "f1")
    assert "(max 4)" in texts and "rgba(255,140,0,0.50)" in texts  # one colour scale across texts


def test_notebook_tables_and_inline_figure():
    stats = {"n_texts": 1200, "mean_chars": 80.4, "sources": {"wiki": 1000}, "concepts": {"cat": 3}}
    assert "1,200 texts" in html.corpus_table(stats).data and "cat (3)" in html.corpus_table(stats).data
    doc = type("Doc", (), {"source": "wiki", "text": "x" * 300})
    assert "…" in html.corpus_examples([doc, doc], max_chars=10).data
    table = html.metrics_table({"fvu": 0.1234, "dead_frac": 0.05, "ce_sae": None}).data
    assert "0.123" in table and "5.0%" in table and "CE loss" not in table
    source = html.show_source(test_notebook_tables_and_inline_figure).data
    assert source.startswith("```python\ndef test_notebook_tables_and_inline_figure")
    fig = plt.figure(figsize=(1, 1))
    plt.close(fig)
    assert html.figure_img(fig).startswith('<img alt="figure" src="data:image/png;base64,')


def test_features_table_lists_density_and_description():
    descriptions = {12: "cooking (AUROC 0.97)", 3: "top tokens: '<'"}
    table = html.features_table(descriptions, density=np.eye(20)[0] + 0.01)
    assert table.data.count("<tr>") == 3 and "1.00e-02" in table.data and "&#x27;&lt;&#x27;" in table.data
