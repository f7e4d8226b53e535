"""The architecture frontier: every arch trained once at one L0 and budget, reruns read metrics.json."""

import torch

from saelib import sweep
from saelib.collection import store_from_tensor
from saelib.figures import arch_frontier_plot
from saelib.trainer import TrainConfig


def test_arch_frontier_trains_each_arch_once_and_tabulates(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(3000, 16, generator=gen)) @ torch.randn(16, 16, generator=gen)
    store = store_from_tensor(acts, tmp_path / "activations")
    base = TrainConfig(expansion=2, k=4, epochs=1, batch_size=256, progress=False)
    points = sweep.arch_frontier(store, tmp_path, archs=("topk", "matryoshka", "jumprelu"), base=base)
    assert [p["arch"] for p in points] == ["topk", "matryoshka", "jumprelu"]
    assert all((tmp_path / "frontier" / p["arch"] / "metrics.json").exists() for p in points)
    assert points[0]["l0"] <= 4 + 1e-6 and all(0 <= p["fvu"] < 1 for p in points)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached frontier run was trained again")

    monkeypatch.setattr(sweep, "train", no_training)
    assert sweep.arch_frontier(store, tmp_path, archs=("topk", "matryoshka", "jumprelu"), base=base) == points
    table = sweep.frontier_table(points)
    header, *rows = table.splitlines()
    assert header.split()[:5] == ["arch", "l0", "fvu", "ce_loss_recovered", "kl_sae"] and len(rows) == 3
    assert rows[1].startswith("matryoshka") and rows[0].split()[4] == "-"  # no LM given: no KL
    assert len({len(line) for line in table.splitlines()}) == 1  # aligned columns
    assert len(arch_frontier_plot(points).axes) == 2
