"""03_analyze on an SAE saved outside the run folder, over a tiny model given by path: the `sae_path` and
`model` parameters open any SAE with its model, and every section (labels, steering sweep, explorer,
dashboard) runs on it."""

from __future__ import annotations

import nbformat
import papermill
from conftest import ROOT, save_tiny_run


def test_03_analyzes_a_saved_sae_over_a_tiny_model(tmp_path, tiny_llama):
    run_dir, sae_dir = tmp_path / "run", tmp_path / "elsewhere" / "my-sae"
    save_tiny_run(tiny_llama, run_dir, sae_dir=sae_dir)
    out = tmp_path / "03_analyze.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "03_analyze.ipynb"),
        str(out),
        parameters=dict(
            run_dir=str(run_dir),
            sae_path=str(sae_dir),
            model=str(run_dir / "model"),
            top_k=3,
            steer_scales=[0, 1, 4],
        ),
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    html = "\n".join(
        str(o.get("data", {}).get("text/html", "")) for c in nb.cells for o in c.get("outputs", [])
    )
    assert "held-out AUROC" in html and "Steering sweep: f" in html and "(cooking_recipes)" in html
    assert "Static copy of the Explorer" in html  # the explorer's fallback, what papermill keeps
    assert not (run_dir / "sae").exists() and (run_dir / "report" / "dashboard.html").exists()
