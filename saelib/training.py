"""Training: `train()`, the loop around `saelib.trainer.Trainer` (one Adam step at a time) that reads
the store, logs, checkpoints and resumes.

Recipes follow the papers (the losses are in `saelib.losses`): TopK with AuxK and unit-norm decoder
rows (Gao et al., 2024), BatchTopK with a learned global threshold (Bussmann et al., 2024), Matryoshka
BatchTopK (Bussmann et al., 2025), ReLU with an L1 penalty weighted by decoder row norms, an
unconstrained decoder and gradient clipping (Anthropic, April 2024), JumpReLU with straight-through
threshold gradients and an L0 penalty (Rajamanoharan et al., 2024).

JumpReLU's thresholds are trained as log-thresholds with their own, larger learning rate: an Adam step
then moves a threshold by a fixed fraction of itself, fast enough to follow the pre-activations
(plain thresholds moved ~lr per step and lagged behind, leaving a third of the latents dead). The
ReLU and JumpReLU sparsity coefficients are steered towards `target_l0`, so one asks for an L0
instead of searching for the coefficient that gives it.

Inputs are scaled so their mean squared norm is d_in; the scale is folded back into the saved SAE.
Batch order depends only on (seed, epoch), and a checkpoint holds every tensor a step reads, so
a run resumed from a checkpoint ends with the same weights as an uninterrupted one.

Under torchrun (DDP) every rank reads the same global batch and trains on its slice; gradients are
averaged in one all-reduce, and the statistics that steer a step (which latents fired, the BatchTopK
cut-off and threshold) are combined across ranks, so every rank takes the very step one process would
on the whole batch. Rank 0 writes the checkpoints and the SAE.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelib import distributed
from saelib.checkpoints import read_latest_checkpoint, write_checkpoint
from saelib.errors import BadArgument, BadFile, TrainingDiverged
from saelib.sae import SAE, SAEConfig
from saelib.trainer import DEFAULT_LR, TrainConfig, Trainer

# fields that change only how a run is watched or where it runs, not what it computes: they may differ
# on resume
WATCH_FIELDS = ("progress", "log_every", "checkpoint_every", "device")


def train(
    store,
    run_dir: str | os.PathLike,
    cfg: TrainConfig | None = None,
    callback: Callable[[int, dict], None] | None = None,
    **overrides,
) -> SAE:
    """Train an SAE on `store`; checkpoints to run_dir/checkpoints, writes run_dir/sae, returns the SAE.

    The returned and saved SAE reads raw activations. If run_dir already holds a checkpoint of the
    same config, training resumes from it. `callback(step, stats)` gets loss, mse, fvu, l0,
    dead_frac and lr every `log_every` steps (e.g. a `saelib.figures.LiveCurves`).
    """
    cfg = _resolve_config(cfg, overrides)
    distributed.init()
    rank, world = distributed.rank(), distributed.world_size()
    if cfg.batch_size % world:
        raise BadArgument(f"batch_size={cfg.batch_size} must be a multiple of the {world} processes")
    local_rows = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    main = distributed.is_main()
    d_in = store.d_model
    if not math.isfinite(store.mean_sq_norm) or store.mean_sq_norm <= 0:
        raise BadFile(
            f"The store at {store.path} has NaN/inf or all-zero activations "
            f"(mean squared norm {store.mean_sq_norm}); collect it again"
        )
    sae_cfg = SAEConfig(
        d_in, cfg.expansion * d_in, arch=cfg.arch, k=cfg.k, prefixes=cfg.prefixes and tuple(cfg.prefixes)
    )
    run_dir = Path(run_dir)
    scale = math.sqrt(d_in / store.mean_sq_norm)
    n_train = store.count_tokens("train")
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise BadArgument(
            f"The store's train split has {n_train} tokens, fewer than batch_size={cfg.batch_size}; "
            "lower batch_size or collect more text"
        )
    total_steps = math.ceil(cfg.n_tokens / cfg.batch_size) if cfg.n_tokens else cfg.epochs * steps_per_epoch
    meta = {
        "model": store.model_name,
        "layer": store.layer,
        "site": store.site,
        "sink_token": store.sink_token,  # put before every text; position 0 was left out of training
        "norm_scale": scale,
        "train": {**asdict(cfg), "n_train_tokens": n_train, "total_steps": total_steps},
    }

    device = distributed.resolve_device(cfg.device)
    sae = SAE(sae_cfg, meta).to(device)
    ckpt_dir = run_dir / "checkpoints"
    resumed = _read_checkpoint(ckpt_dir, cfg, d_in)
    if resumed is None:  # a fresh run; a resumed one gets every tensor from the checkpoint
        _initialise(sae, store, cfg, scale)  # before the Trainer, which copies the jumprelu thresholds
        distributed.broadcast_module(sae)
    trainer = Trainer(sae, cfg, total_steps)
    history = []
    if resumed is not None:
        tensors, history = resumed
        trainer.load_state_dict(tensors)
    for entry in history:  # a resumed (or finished) run shows its curves from the start
        if callback is not None and main:
            callback(entry["step"], entry)

    desc = f"train {cfg.arch}"
    bar = tqdm(
        total=total_steps,
        initial=trainer.steps_done,
        unit="step",
        desc=desc,
        disable=not (cfg.progress and main),
    )
    while trainer.steps_done < total_steps:
        epoch, start = divmod(trainer.steps_done, steps_per_epoch)
        batches = store.iter_batches(cfg.batch_size, seed=cfg.seed * 100_003 + epoch, skip_batches=start)
        for _ in range(start, steps_per_epoch):
            acts = distributed.to_device(
                next(batches)[local_rows], device
            )  # this rank's slice of the global batch
            if not torch.isfinite(acts).all():
                raise BadFile(
                    f"A training batch (epoch {epoch}) holds NaN/inf activations; the store at "
                    f"{store.path} is corrupt: collect it again"
                )
            stats = trainer.step(acts * scale)
            step = trainer.steps_done
            if not math.isfinite(stats["loss"]):
                raise TrainingDiverged(
                    f"Training diverged at step {step} (loss {stats['loss']}); lower lr "
                    f"(now {cfg.lr}). The last good checkpoint in {ckpt_dir} is kept"
                )
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                logged = trainer.log_stats()
                history.append({"step": step, **logged})
                bar.set_postfix(
                    fvu=f"{logged['fvu']:.3f}", l0=f"{logged['l0']:.1f}", dead=f"{logged['dead_frac']:.1%}"
                )
                if callback is not None and main:
                    callback(step, logged)
            if main and (step % cfg.checkpoint_every == 0 or step == total_steps):
                _save_checkpoint(ckpt_dir, trainer, history)
            if step == total_steps:
                break
    bar.close()
    final = sae.folded(scale).eval()
    final.meta["train"]["final_dead_frac"] = trainer.dead_frac()
    if main:
        final.save(run_dir / "sae")
    distributed.barrier()  # on every rank, the SAE is on disk once train() returns
    return final


def _resolve_config(cfg: TrainConfig | None, overrides: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise BadArgument(f"Unknown training option(s) {unknown}; TrainConfig has {sorted(names)}")
    cfg = replace(cfg or TrainConfig(), **overrides)
    if cfg.arch in DEFAULT_LR:  # the metadata and checkpoints record the number used
        cfg = replace(cfg, lr=cfg.lr_for(cfg.arch))
    if cfg.prefixes is not None:  # a list, as the checkpoint's JSON will hold it
        cfg = replace(cfg, prefixes=[int(p) for p in cfg.prefixes])
    if cfg.batch_size < 1 or cfg.epochs < 1 or (cfg.n_tokens is not None and cfg.n_tokens < 1):
        raise BadArgument("batch_size, epochs and n_tokens must be positive")
    if cfg.b_dec_init not in ("geometric_median", "mean"):
        raise BadArgument(f"b_dec_init must be 'geometric_median' or 'mean', not {cfg.b_dec_init!r}")
    return cfg


@torch.no_grad()
def _initialise(sae: SAE, store, cfg: TrainConfig, scale: float) -> None:
    """Random unit decoder rows, encoder = decoder transposed, b_dec at the data's centre."""
    gen = torch.Generator().manual_seed(cfg.seed)
    directions = torch.randn(sae.cfg.d_sae, sae.cfg.d_in, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    # relu starts small so that early latents do not all fire (Anthropic, April 2024)
    norm = 1.0 if sae.cfg.arch in Trainer.UNIT_NORM_ARCHS else 0.1
    sae.W_dec.copy_(directions * norm)
    sae.W_enc.copy_(sae.W_dec.t())
    sample = next(store.iter_batches(4096, seed=cfg.seed)).to(sae.W_dec.device) * scale
    sae.b_dec.copy_(geometric_median(sample) if cfg.b_dec_init == "geometric_median" else sample.mean(0))
    if sae.cfg.arch == "jumprelu":
        pre = sae.pre_acts(sample)
        target = cfg.target_l0 or cfg.k
        rank = max(1, math.ceil(len(pre) * (1 - target / sae.cfg.d_sae)))
        sae.threshold.copy_(pre.kthvalue(rank, dim=0).values.clamp_min(0))


def geometric_median(points: Tensor, n_steps: int = 20, eps: float = 1e-6) -> Tensor:
    """Weiszfeld iterations from the mean: a centre that ignores the few huge-norm outlier tokens."""
    centre = points.mean(0)
    for _ in range(n_steps):
        weights = 1 / (points - centre).norm(dim=1).clamp_min(eps)
        centre = (weights[:, None] * points).sum(0) / weights.sum()
    return centre


def _save_checkpoint(ckpt_dir: Path, trainer: Trainer, history: list[dict]) -> None:
    for name, tensor in trainer.sae.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise TrainingDiverged(
                f"{name} holds NaN/inf at step {trainer.steps_done}; not overwriting the checkpoint in "
                f"{ckpt_dir}. Lower lr and train again"
            )
    info = {"d_in": trainer.sae.cfg.d_in, "config": asdict(trainer.cfg), "history": history}
    write_checkpoint(ckpt_dir, trainer.steps_done, trainer.state_dict(), info)


def _read_checkpoint(
    ckpt_dir: Path, cfg: TrainConfig, d_in: int
) -> tuple[dict[str, Tensor], list[dict]] | None:
    """The newest checkpoint's tensors (for `Trainer.load_state_dict`) and the stats logged so far, after
    checking it belongs to this run (None if there is no checkpoint)."""
    latest = read_latest_checkpoint(ckpt_dir)
    if latest is None:
        return None
    tensors, info = latest
    if info["d_in"] != d_in:
        raise BadFile(
            f"The checkpoint in {ckpt_dir} is for d_in={info['d_in']} but this store has "
            f"d_model={d_in}; use the store it was trained on or a new run_dir"
        )
    saved, current = info["config"], asdict(cfg)
    changed = sorted(k for k in current if k not in WATCH_FIELDS and saved.get(k) != current[k])
    if changed:
        raise BadFile(
            f"{ckpt_dir} holds a checkpoint made with different settings ({', '.join(changed)}); "
            "pass the same settings to resume, or use a new run_dir"
        )
    return tensors, info["history"]
