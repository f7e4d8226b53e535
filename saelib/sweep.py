"""A small sweep of TopK SAEs at other k, to place one SAE on the L0-FVU frontier."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from saelib.metrics import evaluate
from saelib.training import TrainConfig, train


def frontier_sweep(
    store, run_dir: str | os.PathLike, ks: Sequence[int], epochs: int = 3, base: TrainConfig | None = None
) -> list[dict]:
    """Train a TopK SAE per k into run_dir/frontier/topk-k{k} and return their {l0, fvu, label}.

    Points come from the store's eval split only (no LM), so the sweep costs training time alone.
    Finished runs are reused, interrupted ones resume.
    """
    points = []
    for k in ks:
        cfg = replace(base or TrainConfig(), arch="topk", k=k, epochs=epochs, n_tokens=None)
        out = Path(run_dir) / "frontier" / f"topk-k{k}"
        sae = train(store, out, cfg)
        metrics = evaluate(sae, store, run_dir=out, progress=cfg.progress)
        points.append({"l0": metrics["l0"], "fvu": metrics["fvu"], "label": f"topk k={k}, {epochs} ep"})
    return points
