"""The three notebooks run headlessly with papermill on the real bundled model, with small settings."""

import json

import nbformat
import papermill
import pytest
from conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"


def run(name: str, run_path, **parameters) -> nbformat.NotebookNode:
    """Execute notebooks/<name> with papermill, saving it under run_path/notebooks/."""
    out = run_path / "notebooks" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(out),
        parameters=parameters,
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb")))
def test_notebooks_are_committed_clean_with_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    # every code cell is explained by a markdown cell above it
    for before, cell in zip(nb.cells, nb.cells[1:]):
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            assert before.cell_type == "markdown", cell.source[:80]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run")
    nb = run("01_collect.ipynb", out_dir, out_dir=str(out_dir), n_texts=120, max_tokens_per_text=24)
    return out_dir, nb


def test_01_collect(small_run):
    out_dir, nb = small_run
    manifest = json.loads((out_dir / "activations" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_tokens"] > 1000 and manifest["d_model"] == 576
    text = outputs_text(nb)
    assert "tokens/s" in text and "Paris" in text
    assert any(
        "image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])
    )  # the norm histogram


@pytest.fixture(scope="module")
def trained_run(small_run):
    out_dir, _ = small_run
    nb = run(
        "02_train.ipynb",
        out_dir,
        run_dir=str(out_dir),
        expansion=2,
        k=8,
        epochs=2,
        batch_size=256,
        n_eval_texts=6,
        frontier_archs=["topk", "jumprelu"],
        frontier_epochs=1,
    )
    return out_dir, nb


def test_02_train(trained_run):
    out_dir, nb = trained_run
    metrics = json.loads((out_dir / "metrics.json").read_text())
    for key in (
        "mse",
        "fvu",
        "l0",
        "dead_frac",
        "dense_frac",
        "feature_density",
        "ce_clean",
        "ce_sae",
        "ce_zero",
        "kl_sae",
        "ce_loss_recovered",
        "absorption_rate",
        "sparse_probe_acc_k1",
    ):
        assert key in metrics, key
    assert metrics["l0"] <= 8 + 1e-6 and 0 <= metrics["fvu"] < 1
    assert (out_dir / "sae" / "cfg.json").exists() and (out_dir / "sae" / "sae_weights.safetensors").exists()
    frontier = json.loads((out_dir / "frontier" / "jumprelu" / "metrics.json").read_text())
    assert (out_dir / "frontier" / "topk" / "metrics.json").exists() and "absorption_rate" in frontier
    text = outputs_text(nb)
    assert "def encode" in text and "CE-loss recovered" in text


def test_03_analyze(trained_run):
    out_dir, _ = trained_run
    nb = run("03_analyze.ipynb", out_dir, run_dir=str(out_dir), top_k=5, n_stat_tokens=3000)
    text = outputs_text(nb)
    assert "Concept labels" in text and "held-out AUROC" in text
    assert "before" in text and "zeroed" in text  # steering and ablation shown
    dashboard = out_dir / "report" / "dashboard.html"
    page = dashboard.read_text()
    assert "<img" in page and "http://" not in page and "https://" not in page
