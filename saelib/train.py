"""Training loop: normalise, initialise, Adam with schedules, dead latents, checkpoints, exact resume.

Recipes follow the papers: TopK with AuxK and unit-norm decoder rows (Gao et al., 2024), BatchTopK
with a learned global threshold (Bussmann et al., 2024), ReLU with an L1 penalty weighted by
decoder row norms and an unconstrained decoder (Anthropic, April 2024), JumpReLU with straight-
through threshold gradients and an L0 penalty (Rajamanoharan et al., 2024).

Inputs are scaled so their mean squared norm is d_in; the scale is folded back into the saved SAE.
Batch order depends only on (seed, epoch), and a checkpoint holds every tensor the loop reads, so
a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from saelib.sae import SAE, SAEConfig, SparseDecode, SparseEncode, row_offsets

# fields that change only how a run is watched, not what it computes: they may differ on resume
WATCH_FIELDS = ("progress", "log_every", "checkpoint_every")


@dataclass
class TrainConfig:
    arch: str = "topk"
    expansion: int = 8  # d_sae = expansion * d_in
    k: int = 32  # topk / batchtopk: latents per token
    lr: float = 8e-4
    batch_size: int = 1024
    epochs: int = 10  # passes over the train split; ignored when n_tokens is set
    n_tokens: int | None = None  # train on this many tokens instead (cycling through epochs)
    seed: int = 0
    warmup_frac: float = 0.05  # linear lr warm-up over this fraction of the steps
    decay_frac: float = 0.2  # linear lr decay to zero over the last fraction of the steps
    b_dec_init: str = "geometric_median"  # or "mean"
    # relu: L1 of latents weighted by decoder row norms, warmed up linearly
    l1_coeff: float = 5.0
    l1_warmup_frac: float = 0.05
    # topk / batchtopk: AuxK loss on the top k_aux dead latents (default d_in // 2)
    aux_coeff: float = 1 / 32
    k_aux: int | None = None
    dead_tokens: int = 200_000  # a latent is dead if it has not fired in this many training tokens
    # batchtopk: threshold = debiased moving average of the smallest kept activation
    threshold_lr: float = 0.01
    # jumprelu: L0 penalty with straight-through threshold gradients; thresholds start where each
    # latent fires on k / d_sae of a sample, so L0 starts near k
    l0_coeff: float = 0.1
    l0_warmup_frac: float = 0.05
    jumprelu_bandwidth: float = 0.05
    checkpoint_every: int = 500
    log_every: int = 20
    progress: bool = True


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
    dead_frac and lr every `log_every` steps (e.g. a `saelib.plots.LiveCurves`).
    """
    cfg = _resolve_config(cfg, overrides)
    d_in = store.d_model
    if not math.isfinite(store.mean_sq_norm) or store.mean_sq_norm <= 0:
        raise ValueError(
            f"The store at {store.path} has NaN/inf or all-zero activations "
            f"(mean squared norm {store.mean_sq_norm}); collect it again"
        )
    sae_cfg = SAEConfig(d_in, cfg.expansion * d_in, arch=cfg.arch, k=cfg.k)
    run_dir = Path(run_dir)
    scale = math.sqrt(d_in / store.mean_sq_norm)
    n_train = store.count_tokens("train")
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"The store's train split has {n_train} tokens, fewer than batch_size={cfg.batch_size}; "
            "lower batch_size or collect more text"
        )
    total_steps = math.ceil(cfg.n_tokens / cfg.batch_size) if cfg.n_tokens else cfg.epochs * steps_per_epoch
    meta = {
        "model": store.model_name,
        "layer": store.layer,
        "site": store.site,
        "norm_scale": scale,
        "train": {**asdict(cfg), "n_train_tokens": n_train, "total_steps": total_steps},
    }

    sae = SAE(sae_cfg, meta)
    state = _TrainState(sae_cfg, cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    ckpt_dir = run_dir / "checkpoints"
    step, history = _load_checkpoint(ckpt_dir, sae, optimizer, state, cfg, d_in)
    if step is None:
        step, history = 0, []
        _initialise(sae, store, cfg, scale)
    for entry in history:  # a resumed (or finished) run shows its curves from the start
        if callback is not None:
            callback(entry["step"], entry)

    bar = tqdm(
        total=total_steps, initial=step, unit="step", desc=f"train {cfg.arch}", disable=not cfg.progress
    )
    running = _RunningStats()
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        batches = store.iter_batches(cfg.batch_size, seed=cfg.seed * 100_003 + epoch, skip_batches=start)
        for _ in range(start, steps_per_epoch):
            acts = next(batches)
            if not torch.isfinite(acts).all():
                raise ValueError(
                    f"A training batch (epoch {epoch}) holds NaN/inf activations; the store at "
                    f"{store.path} is corrupt: collect it again"
                )
            lr = cfg.lr * _lr_factor(step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            stats = _train_step(sae, optimizer, state, acts * scale, step, total_steps, cfg)
            if not math.isfinite(stats["loss"]):
                raise ValueError(
                    f"Training diverged at step {step} (loss {stats['loss']}); lower lr "
                    f"(now {cfg.lr}). The last good checkpoint in {ckpt_dir} is kept"
                )
            step += 1
            bar.update(1)
            running.add(stats)
            if step % cfg.log_every == 0 or step == total_steps:
                logged = {**running.mean(), "dead_frac": state.dead_frac(), "lr": lr}
                history.append({"step": step, **logged})
                bar.set_postfix(
                    fvu=f"{logged['fvu']:.3f}", l0=f"{logged['l0']:.1f}", dead=f"{logged['dead_frac']:.1%}"
                )
                if callback is not None:
                    callback(step, logged)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                _save_checkpoint(ckpt_dir, step, sae, optimizer, state, cfg, d_in, history)
            if step == total_steps:
                break
    bar.close()
    final = sae.folded(scale).eval()
    final.meta["train"]["final_dead_frac"] = state.dead_frac()
    final.save(run_dir / "sae")
    return final


def _resolve_config(cfg: TrainConfig | None, overrides: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"Unknown training option(s) {unknown}; TrainConfig has {sorted(names)}")
    cfg = replace(cfg or TrainConfig(), **overrides)
    if cfg.batch_size < 1 or cfg.epochs < 1 or (cfg.n_tokens is not None and cfg.n_tokens < 1):
        raise ValueError("batch_size, epochs and n_tokens must be positive")
    if cfg.b_dec_init not in ("geometric_median", "mean"):
        raise ValueError(f"b_dec_init must be 'geometric_median' or 'mean', not {cfg.b_dec_init!r}")
    return cfg


# ---- initialisation and schedules ----------------------------------------------------------------


@torch.no_grad()
def _initialise(sae: SAE, store, cfg: TrainConfig, scale: float) -> None:
    """Random unit decoder rows, encoder = decoder transposed, b_dec at the data's centre."""
    gen = torch.Generator().manual_seed(cfg.seed)
    directions = torch.randn(sae.cfg.d_sae, sae.cfg.d_in, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    # relu / jumprelu start small so that early latents do not all fire (Anthropic, April 2024)
    norm = 1.0 if sae.cfg.arch in ("topk", "batchtopk") else 0.1
    sae.W_dec.copy_(directions * norm)
    sae.W_enc.copy_(sae.W_dec.t())
    sample = next(store.iter_batches(4096, seed=cfg.seed)) * scale
    sae.b_dec.copy_(geometric_median(sample) if cfg.b_dec_init == "geometric_median" else sample.mean(0))
    if sae.cfg.arch == "jumprelu":
        pre = sae.pre_acts(sample)
        rank = max(1, math.ceil(len(pre) * (1 - sae.cfg.k / sae.cfg.d_in / cfg.expansion)))
        sae.threshold.copy_(pre.kthvalue(rank, dim=0).values.clamp_min(0))


def geometric_median(points: Tensor, n_steps: int = 20, eps: float = 1e-6) -> Tensor:
    """Weiszfeld iterations from the mean: a centre that ignores the few huge-norm outlier tokens."""
    centre = points.mean(0)
    for _ in range(n_steps):
        weights = 1 / (points - centre).norm(dim=1).clamp_min(eps)
        centre = (weights[:, None] * points).sum(0) / weights.sum()
    return centre


def _lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    warmup = max(1, round(cfg.warmup_frac * total))
    decay = round(cfg.decay_frac * total)
    if step < warmup:
        return (step + 1) / warmup
    if step >= total - decay:
        return (total - step) / decay
    return 1.0


def _warmup(step: int, total: int, frac: float) -> float:
    return min(1.0, (step + 1) / max(1, round(frac * total)))


# ---- one step ------------------------------------------------------------------------------------


class _TrainState:
    """Tensors the loop carries between steps besides weights and Adam: all saved in checkpoints."""

    def __init__(self, sae_cfg: SAEConfig, cfg: TrainConfig):
        self.tokens_since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long)
        self.threshold_avg = torch.zeros((), dtype=torch.float64)  # batchtopk, before debiasing
        self.threshold_updates = torch.zeros((), dtype=torch.long)
        self.dead_tokens = cfg.dead_tokens

    def tensors(self) -> dict[str, Tensor]:
        return {
            "tokens_since_fired": self.tokens_since_fired,
            "threshold_avg": self.threshold_avg,
            "threshold_updates": self.threshold_updates,
        }

    def load(self, tensors: dict[str, Tensor]) -> None:
        for name, value in self.tensors().items():
            value.copy_(tensors[name])

    def record_fired(self, fired: Tensor, n_tokens: int) -> None:
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.dead_tokens

    def dead_frac(self) -> float:
        return self.dead_mask().float().mean().item()


class _RunningStats:
    """Means of the per-step stats since the last log line."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, stats: dict) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def mean(self) -> dict:
        out = {key: value / self.count for key, value in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


def _train_step(
    sae: SAE, optimizer, state: _TrainState, x: Tensor, step: int, total: int, cfg: TrainConfig
) -> dict:
    """One Adam step on a normalised batch; returns float stats (loss, mse, fvu, l0)."""
    if sae.cfg.arch in ("topk", "batchtopk"):
        loss, recon, l0 = _sparse_loss(sae, x, state, cfg)
    else:
        loss, recon, l0 = _dense_loss(sae, x, state, step, total, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    unit_norm = sae.cfg.arch in ("topk", "batchtopk")
    if unit_norm:
        _drop_parallel_grad(sae.W_dec)
    optimizer.step()
    with torch.no_grad():
        if unit_norm:
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        if sae.cfg.arch == "jumprelu":
            sae.threshold.clamp_(min=0)  # keeps pre > threshold a subset of pre > 0, as at inference
    with torch.no_grad():
        sse = (recon - x).pow(2).sum()
        total_var = (x - x.mean(0)).pow(2).sum()
    return {"loss": loss.item(), "mse": sse.item() / x.numel(), "fvu": (sse / total_var).item(), "l0": l0}


def _sparse_loss(sae: SAE, x: Tensor, state: _TrainState, cfg: TrainConfig):
    """TopK / BatchTopK: one dense GEMM, everything else on the selected latents only."""
    n_rows, d_sae, k = len(x), sae.cfg.d_sae, sae.cfg.k
    dead = state.dead_mask()
    n_dead = int(dead.sum())
    k_aux = min(cfg.k_aux or sae.cfg.d_in // 2, n_dead)
    n_main = n_rows * k

    def select(pre: Tensor) -> tuple[Tensor, Tensor]:
        if sae.cfg.arch == "topk":
            rows = torch.arange(n_rows).repeat_interleave(k)
            cols = pre.topk(k, dim=1, sorted=False).indices.flatten()
        else:  # the n_rows * k largest of the whole batch, in row order
            flat = batch_top_indices(pre.flatten(), n_main).sort().values
            rows, cols = flat // d_sae, flat % d_sae
        if k_aux == 0:
            return rows, cols
        dead_cols = dead.nonzero().squeeze(1)  # topk over the dead columns only: usually few
        aux_cols = dead_cols[pre[:, dead_cols].topk(k_aux, dim=1, sorted=False).indices.flatten()]
        return torch.cat([rows, torch.arange(n_rows).repeat_interleave(k_aux)]), torch.cat([cols, aux_cols])

    # (x - b_dec) @ W_enc + b_enc, with b_dec's share as a bias so no gradient flows through x
    bias = sae.b_enc - sae.b_dec @ sae.W_enc
    values, rows, cols = SparseEncode.apply(x, sae.W_enc, bias, select)
    main_rows, main_cols, main_values = rows[:n_main], cols[:n_main], F.relu(values[:n_main])
    recon = (
        SparseDecode.apply(main_values, sae.W_dec, main_rows, main_cols, row_offsets(main_rows, n_rows))
        + sae.b_dec
    )
    loss = (recon - x).pow(2).sum(1).mean()
    if k_aux:
        # dead latents learn to predict what the live ones missed (Gao et al., 2024, appendix A.2)
        aux_rows, aux_cols = rows[n_main:], cols[n_main:]
        aux_recon = SparseDecode.apply(
            F.relu(values[n_main:]), sae.W_dec, aux_rows, aux_cols, row_offsets(aux_rows, n_rows)
        )
        residual = (x - recon).detach()
        aux_loss = (aux_recon - residual).pow(2).sum(1).mean()
        loss = loss + cfg.aux_coeff * min(1.0, n_dead / (cfg.k_aux or sae.cfg.d_in // 2)) * aux_loss
    with torch.no_grad():
        active = main_values > 0
        state.record_fired(main_cols[active].unique(), n_rows)
        if sae.cfg.arch == "batchtopk" and active.any():
            _update_batch_threshold(sae, state, main_values[active].min(), cfg.threshold_lr)
    return loss, recon, active.sum().item() / n_rows


def batch_top_indices(values: Tensor, n: int) -> Tensor:
    """Indices of the n largest entries of a flat tensor, 3-4x faster than topk over all of it.

    A strided sample gives a cut-off a bit below the n-th largest value; if at least n entries lie
    above it, they contain the whole top n, so only those candidates go through topk (exact).
    """
    sample = values[:: max(1, len(values) // 200_000)]
    keep = min(len(sample), math.ceil(1.5 * n * len(sample) / len(values)) + 16)
    if keep < len(sample):
        cutoff = sample.kthvalue(len(sample) - keep + 1).values
        candidates = (values >= cutoff).nonzero().squeeze(1)
        if len(candidates) >= n:
            return candidates[values[candidates].topk(n, sorted=False).indices]
    return values.topk(n, sorted=False).indices


@torch.no_grad()
def _update_batch_threshold(sae: SAE, state: _TrainState, smallest: Tensor, lr: float) -> None:
    state.threshold_avg.mul_(1 - lr).add_(lr * smallest.double())
    state.threshold_updates += 1
    debiased = state.threshold_avg / (1 - (1 - lr) ** state.threshold_updates.item())
    sae.threshold.fill_(debiased.item())


def _dense_loss(sae: SAE, x: Tensor, state: _TrainState, step: int, total: int, cfg: TrainConfig):
    """ReLU / JumpReLU: dense encoder and decoder GEMMs."""
    pre = torch.addmm(sae.b_enc - sae.b_dec @ sae.W_enc, x, sae.W_enc)
    if sae.cfg.arch == "relu":
        latents = F.relu(pre)
        sparsity = (latents @ sae.W_dec.norm(dim=1)).mean()
        coeff = cfg.l1_coeff * _warmup(step, total, cfg.l1_warmup_frac)
    else:
        latents = _JumpReLU.apply(pre, sae.threshold, cfg.jumprelu_bandwidth)
        sparsity = _Step.apply(pre, sae.threshold, cfg.jumprelu_bandwidth).sum(1).mean()
        coeff = cfg.l0_coeff * _warmup(step, total, cfg.l0_warmup_frac)
    recon = latents @ sae.W_dec + sae.b_dec
    loss = (recon - x).pow(2).sum(1).mean() + coeff * sparsity
    with torch.no_grad():
        active = latents > 0
        state.record_fired(active.any(0), len(x))
    return loss, recon.detach(), active.sum().item() / len(x)


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - threshold); the threshold's gradient uses a rectangle kernel of width `bandwidth`."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad_out * (pre > threshold)
        kernel = _rectangle((pre - threshold) / ctx.bandwidth) / ctx.bandwidth
        grad_threshold = -(threshold * kernel * grad_out).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(pre - threshold), counting active latents. Its pseudo-gradient reaches both the threshold
    and the pre-activations near it, so the encoder too learns to stay below threshold (as in
    Anthropic's January 2025 JumpReLU recipe); the threshold alone moves too slowly under Adam."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_pre = _rectangle((pre - threshold) / ctx.bandwidth) / ctx.bandwidth * grad_out
        return grad_pre, -grad_pre.sum(0), None


@torch.no_grad()
def _drop_parallel_grad(W_dec) -> None:
    """Remove the gradient component along each unit decoder row: it would only change the norm."""
    W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec


# ---- checkpoints ---------------------------------------------------------------------------------


def _save_checkpoint(
    ckpt_dir: Path,
    step: int,
    sae: SAE,
    optimizer,
    state: _TrainState,
    cfg: TrainConfig,
    d_in: int,
    history: list[dict],
) -> None:
    """Write checkpoints/step-NNNNNNN as a temp folder renamed into place, then drop older ones."""
    for name, tensor in sae.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"{name} holds NaN/inf at step {step}; not overwriting the checkpoint in {ckpt_dir}. "
                "Lower lr and train again"
            )
    tensors = {f"sae.{name}": t.detach().clone().contiguous() for name, t in sae.state_dict().items()}
    opt_state = optimizer.state_dict()
    for index, entry in opt_state["state"].items():
        for key, value in entry.items():
            tensors[f"adam.{index}.{key}"] = value.detach().clone().contiguous()
    tensors.update({f"state.{name}": t.clone() for name, t in state.tensors().items()})
    info = {"step": step, "d_in": d_in, "config": asdict(cfg), "history": history}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(info, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in ckpt_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old)


def _load_checkpoint(
    ckpt_dir: Path, sae: SAE, optimizer, state: _TrainState, cfg: TrainConfig, d_in: int
) -> tuple[int | None, list[dict]]:
    """Restore the newest checkpoint into sae/optimizer/state; return its step (None if there is none)
    and the logged stats so far."""
    found = sorted(ckpt_dir.glob("step-*")) if ckpt_dir.exists() else []
    if not found:
        return None, []
    latest = found[-1]
    info = json.loads((latest / "state.json").read_text())
    if info["d_in"] != d_in:
        raise ValueError(
            f"The checkpoint in {ckpt_dir} is for d_in={info['d_in']} but this store has "
            f"d_model={d_in}; use the store it was trained on or a new run_dir"
        )
    saved, current = info["config"], asdict(cfg)
    changed = sorted(k for k in current if k not in WATCH_FIELDS and saved.get(k) != current[k])
    if changed:
        raise ValueError(
            f"{ckpt_dir} holds a checkpoint made with different settings ({', '.join(changed)}); "
            "pass the same settings to resume, or use a new run_dir"
        )
    tensors = load_file(str(latest / "state.safetensors"))
    sae.load_state_dict({name[4:]: t for name, t in tensors.items() if name.startswith("sae.")})
    opt_state = optimizer.state_dict()
    for index in range(len(opt_state["param_groups"][0]["params"])):
        entry = {key.split(".")[2]: t for key, t in tensors.items() if key.startswith(f"adam.{index}.")}
        if entry:
            opt_state["state"][index] = entry
    optimizer.load_state_dict(opt_state)
    state.load({name[6:]: t for name, t in tensors.items() if name.startswith("state.")})
    return info["step"], info.get("history", [])
