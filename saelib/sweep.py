"""Sweeps that place SAEs on the sparsity-faithfulness frontier: TopK at other k, and every architecture
at one target L0 and one token budget (the architecture frontier), each trained once into
run_dir/frontier/ so that reruns only read metrics.json."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from saelib.atomic import write_json
from saelib.metrics import evaluate, evaluate_many
from saelib.probes import ProbeData
from saelib.trainer import TrainConfig
from saelib.training import train

FRONTIER_ARCHS = ("topk", "batchtopk", "matryoshka", "jumprelu", "relu")
TABLE_COLUMNS = {
    "arch": "{}",
    "l0": "{:.1f}",
    "fvu": "{:.3f}",
    "ce_loss_recovered": "{:.3f}",
    "kl_sae": "{:.3f}",
    "dead_frac": "{:.1%}",
    "dense_frac": "{:.1%}",
    "absorption_rate": "{:.3f}",
    "sparse_probe_acc_k1": "{:.3f}",
    "sparse_probe_acc_k5": "{:.3f}",
    "train_seconds": "{:.0f}",
}


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


def arch_frontier(
    store,
    run_dir: str | os.PathLike,
    lm=None,
    archs: Sequence[str] = FRONTIER_ARCHS,
    base: TrainConfig | None = None,
    n_eval_texts: int = 150,
    probes: ProbeData | None = None,
) -> list[dict]:
    """Every arch at the same target L0 (`base.k`, steered for relu and jumprelu) and token budget
    (`base.epochs` or `base.n_tokens`), trained into run_dir/frontier/<arch>; returns each one's metrics
    (CE-loss recovered, sparse probing and absorption too when `lm` is given; pass `probes` from
    `saelib.probes.probe_data` to reuse the LM's activations).

    Every SAE is trained first, then the new ones are evaluated together, sharing the LM's clean and
    zero-ablated passes. A run whose metrics.json exists is neither retrained nor re-evaluated: delete
    its folder to redo it."""
    base = base or TrainConfig()
    points: dict[str, dict] = {}
    trained: dict[str, tuple] = {}  # arch -> (SAE, out dir, seconds) still to evaluate
    for arch in archs:
        out = Path(run_dir) / "frontier" / arch
        if (out / "metrics.json").exists():
            points[arch] = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            continue
        start = time.perf_counter()
        sae = train(store, out, replace(base, arch=arch, target_l0=base.k))
        trained[arch] = (sae, out, time.perf_counter() - start)  # less if it resumed a checkpoint
    if trained:
        texts = store.documents("eval")[:n_eval_texts] if lm is not None else None
        saes = [sae for sae, _, _ in trained.values()]
        evaluated = evaluate_many(saes, store, lm, texts, progress=base.progress, probes=probes)
        for (arch, (_, out, seconds)), metrics in zip(trained.items(), evaluated):
            points[arch] = {**metrics, "train_seconds": seconds}
            write_json(out / "metrics.json", points[arch])
    return [points[arch] for arch in archs]


def frontier_table(points: Sequence[dict]) -> str:
    """The frontier's metrics as a text table, one row per arch (named on the left, numbers right-aligned),
    each column as wide as its widest cell."""
    cells = [
        ["-" if point.get(name) is None else fmt.format(point[name]) for name, fmt in TABLE_COLUMNS.items()]
        for point in points
    ]
    columns = list(zip(TABLE_COLUMNS, *cells))
    widths = [max(len(cell) for cell in column) for column in columns]
    lines = [list(TABLE_COLUMNS), *cells]
    return "\n".join(
        "  ".join(
            [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        )
        for line in lines
    )
