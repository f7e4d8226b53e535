"""One training step at a time: `TrainConfig` (what a run computes) and `Trainer` (an SAE in training:
Adam, the lr and penalty schedules, and the per-latent counters the losses read).

`Trainer.step(batch)` is the public unit the loop in `saelib.training` and the benchmarks drive. The
matmuls run in `precision` (bfloat16 where the hardware has it) while weights and Adam state stay float32.
Under torchrun every rank calls `step` on its slice of the same global batch; gradients and the statistics
that steer the step are combined across ranks, so every rank takes the step one process would take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from saelib import distributed
from saelib.losses import TrainLoss, dense_loss, topk_loss
from saelib.malloc import keep_freed_memory
from saelib.precision import matmul_dtype, resolve_precision
from saelib.sae import BATCH_ARCHS, SAE

# Adam's learning rate per arch when TrainConfig.lr is None, tuned on the demo store (expansion 8, L0 32).
# 10 epochs, 8e-4 -> 2e-3: TopK FVU 0.149 -> 0.137, BatchTopK 0.154 -> 0.138, Matryoshka 0.168 -> 0.150
# (TopK at 3e-3: 0.136 but 1.9% dead). ReLU at 3e-3 against 2e-3: the same FVU at a held-out L0 nearer its
# target (6 epochs: 0.160 at L0 30.9 vs 0.161 at 33.5) and a far better one in 2 epochs (0.232 vs 0.281).
# JumpReLU, 6 epochs, 8e-4 / 1.2e-3 / 2e-3: FVU 0.162 / 0.152 / 0.152, dead 0.2% / 0.9% / 2.7% (its
# thresholds learn at threshold_lr_scale * lr)
DEFAULT_LR = {"topk": 2e-3, "batchtopk": 2e-3, "matryoshka": 2e-3, "relu": 3e-3, "jumprelu": 1.2e-3}


@dataclass
class TrainConfig:
    arch: str = "topk"
    expansion: int = 8  # d_sae = expansion * d_in
    k: int = 32  # topk / batchtopk / matryoshka: latents per token
    prefixes: list[int] | None = None  # matryoshka: nested prefix sizes (None: d_sae/16, /8, /4, /2, d_sae)
    lr: float | None = None  # None: the arch's default, DEFAULT_LR[arch]
    batch_size: int = 1024
    epochs: int = 10  # passes over the train split; ignored when n_tokens is set
    n_tokens: int | None = None  # train on this many tokens instead (cycling through epochs)
    seed: int = 0
    warmup_frac: float = 0.05  # linear lr warm-up over this fraction of the steps
    decay_frac: float = 0.2  # linear lr decay to zero over the last fraction of the steps
    b_dec_init: str = "geometric_median"  # or "mean"
    # relu: L1 of latents weighted by decoder row norms, warmed up linearly; gradient norm clipped.
    # l1_coeff (like l0_coeff) is where the steered coefficient starts and its floor, so keep it at or
    # below what target_l0 needs. On the demo store (expansion 8, target L0 32, 10 epochs, lr 2e-3) a
    # floor of 2 held L0 at 25.4 (FVU 0.161); 1 let it reach 32.9 (FVU 0.150, TopK k 32: 0.137)
    l1_coeff: float = 1.0
    l1_warmup_frac: float = 0.05
    grad_clip: float = 1.0  # relu / jumprelu
    # relu / jumprelu: after the penalty's warm-up, a PI controller in log space steers its coefficient:
    # coeff = integral * (L0 / target) ** target_l0_gain, and the integral is multiplied every step by
    # (L0 / target) ** (target_l0_rate * lr factor), never below its start (l1_coeff / l0_coeff: early L0
    # sits below target while the encoder learns, and an integral wound down there lagged ~150 steps once
    # L0 rose past it); target_l0 None means k; rate 0 keeps it fixed.
    # The target falls log-linearly from the L0 after the warm-up to target_l0 by l0_anneal_frac
    # of the steps: relu starts near L0 = d_sae / 2, and steering it down at once killed half its latents
    target_l0: float | None = None
    target_l0_rate: float = 0.15
    target_l0_gain: float = 2.0
    l0_anneal_frac: float = 0.15
    # relu / jumprelu: latents silent for preact_tokens training tokens have their pre-activations pulled
    # up to the threshold (0 for relu) with weight preact_coeff (Anthropic, January 2025), so they fire again
    preact_coeff: float = 3e-3
    preact_tokens: int = 25_000
    # topk / batchtopk: AuxK loss on the top k_aux dead latents (default d_in // 2)
    aux_coeff: float = 1 / 32
    k_aux: int | None = None
    dead_tokens: int = 200_000  # a latent is dead if it has not fired in this many training tokens
    # batchtopk: threshold = debiased moving average of the smallest kept activation
    threshold_lr: float = 0.01
    # jumprelu: L0 penalty with straight-through threshold gradients; thresholds start where each
    # latent fires on target_l0 / d_sae of a sample, so L0 starts near the target; log-thresholds learn
    # at threshold_lr_scale * lr. l0_coeff 0.1 holds L0 ~32 on the demo store (expansion 8); 0.3 pinned it
    # at 24, so lower it for a larger target_l0
    l0_coeff: float = 0.1
    l0_warmup_frac: float = 0.05
    jumprelu_bandwidth: float = 0.05
    threshold_lr_scale: float = 10.0
    device: str = "auto"  # "auto": CUDA if torch sees one (cuda:LOCAL_RANK under torchrun), else cpu
    checkpoint_every: int = 500
    log_every: int = 20
    progress: bool = True
    # "auto": bfloat16 matmuls where the CPU multiplies bf16 natively (saelib.precision), else float32;
    # weights and Adam state stay float32 either way
    precision: str = "auto"

    def __post_init__(self):
        self.precision = resolve_precision(self.precision, distributed.resolve_device(self.device))

    def __repr__(self) -> str:
        """One field per line, so a notebook shows the recipe readably (and it still evaluates); a default
        lr shows the number it stands for."""
        lines = "".join(
            f"\n    {f.name}={getattr(self, f.name)!r},{self._note(f.name)}" for f in fields(self)
        )
        return f"TrainConfig({lines}\n)"

    def lr_for(self, arch: str) -> float:
        """The learning rate a run of `arch` uses: lr, or the arch's default when lr is None."""
        return self.lr if self.lr is not None else DEFAULT_LR[arch]

    def _note(self, name: str) -> str:
        if name == "lr" and self.lr is None and self.arch in DEFAULT_LR:
            return f"  # {self.arch}'s default: {self.lr_for(self.arch):g}"
        return ""


class Trainer:
    """An SAE in training: Adam, the lr and penalty schedules, and the per-latent counters the losses read.

    `step(batch)` takes one Adam step on a batch already scaled to mean squared norm d_in; `train()` is
    a loop around it. `state_dict()` holds every tensor the next step reads (weights, Adam moments,
    counters), so a trainer restored from it continues exactly. Arch and k come from `sae.cfg`.
    """

    COUNTERS = (
        "tokens_since_fired",
        "threshold_avg",
        "threshold_updates",
        "sparsity_coeff",
        "l0_error",
        "l0_start",
    )
    UNIT_NORM_ARCHS = ("topk", "jumprelu", *BATCH_ARCHS)

    def __init__(self, sae: SAE, cfg: TrainConfig, total_steps: int):
        self.sae, self.cfg, self.total_steps = sae, cfg, total_steps
        keep_freed_memory()  # every step's temporaries reuse the last step's memory
        # fused Adam copies a non-contiguous parameter in and out of its kernel every step; W_enc is stored
        # latent-major (its transpose is contiguous), so Adam updates that transpose: the same memory
        self._handed_over = [
            (param, torch.nn.Parameter(param.data.t()))
            for param in sae.parameters()
            if not param.is_contiguous() and param.t().is_contiguous()
        ]
        views = {id(param): view for param, view in self._handed_over}
        groups = [{"params": [views.get(id(p), p) for p in sae.parameters()], "lr_scale": 1.0}]
        if sae.cfg.arch == "jumprelu":  # the SAE's threshold buffer follows this differentiable copy
            self.log_threshold = torch.nn.Parameter(sae.threshold.clamp_min(1e-3).log())
            groups.append({"params": [self.log_threshold], "lr_scale": cfg.threshold_lr_scale})
        # fused: one pass over each tensor per step instead of one per arithmetic op
        self.base_lr = cfg.lr_for(sae.cfg.arch)
        self.optimizer = torch.optim.Adam(groups, lr=self.base_lr, betas=(0.9, 0.999), fused=True)
        self.lr = self.base_lr  # of the latest step
        self.steps_done = 0
        device = sae.W_dec.device  # the counters live beside the weights
        self.tokens_since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
        self.threshold_avg = torch.zeros(
            (), dtype=torch.float64, device=device
        )  # batchtopk, before debiasing
        self.threshold_updates = torch.zeros((), dtype=torch.long, device=device)
        self.sparsity_coeff = torch.tensor(self._start_coeff(), dtype=torch.float64)  # relu / jumprelu
        self.l0_error = torch.zeros((), dtype=torch.float64)  # log(L0 / target) of the latest step
        self.l0_start = torch.zeros((), dtype=torch.float64)  # L0 of the first step: the target's start
        self._sums: dict[str, float] = {}  # of the step stats since the last log_stats()
        self._n_summed = 0

    def step(self, x: Tensor) -> dict[str, float]:
        """One Adam step on a normalised batch [batch, d_in]; returns its loss, mse, fvu, l0 and lr."""
        sae, cfg = self.sae, self.cfg
        lr_factor = _lr_factor(self.steps_done, self.total_steps, cfg)
        self.lr = self.base_lr * lr_factor
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group["lr_scale"]
        out = self._loss(x)
        self.optimizer.zero_grad(set_to_none=True)
        self.sae.zero_grad(set_to_none=True)  # W_enc's gradient is Adam's only through a view
        out.loss.backward()
        thresholds = [self.log_threshold] if sae.cfg.arch == "jumprelu" else []
        distributed.average_gradients([*sae.parameters(), *thresholds])
        unit_norm = sae.cfg.arch in self.UNIT_NORM_ARCHS
        if unit_norm:
            _drop_parallel_grad(sae.W_dec)
        if sae.cfg.arch in ("relu", "jumprelu"):
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        for param, view in self._handed_over:
            view.grad = param.grad.t()
        self.optimizer.step()
        with torch.no_grad():
            if unit_norm:
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            if sae.cfg.arch == "jumprelu":
                sae.threshold.copy_(self.log_threshold.exp())
            self._count(out, len(x) * distributed.world_size())
            stats = _batch_stats(x, out)
            self._steer(stats["l0"], lr_factor)  # the whole global batch's L0, the same on every rank
        for key, value in stats.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._n_summed += 1
        return {**stats, "lr": self.lr}

    def _loss(self, x: Tensor) -> TrainLoss:
        cfg, d_in, dtype = self.cfg, self.sae.cfg.d_in, matmul_dtype(self.cfg.precision)
        if self.sae.cfg.arch in ("topk", *BATCH_ARCHS):
            return topk_loss(self.sae, x, self.dead_mask(), cfg.k_aux or d_in // 2, cfg.aux_coeff, dtype)
        coeff = self.sparsity_coeff.item() * math.exp(cfg.target_l0_gain * self.l0_error.item())
        coeff *= _warmup(self.steps_done, self.total_steps, self._warmup_frac())
        silent = self.tokens_since_fired >= cfg.preact_tokens
        threshold = self.log_threshold.exp() if self.sae.cfg.arch == "jumprelu" else None
        return dense_loss(
            self.sae, x, coeff, threshold, cfg.jumprelu_bandwidth, silent, cfg.preact_coeff, dtype=dtype
        )

    def _start_coeff(self) -> float:
        return self.cfg.l1_coeff if self.sae.cfg.arch == "relu" else self.cfg.l0_coeff

    def _warmup_frac(self) -> float:
        return self.cfg.l1_warmup_frac if self.sae.cfg.arch == "relu" else self.cfg.l0_warmup_frac

    def _steer(self, l0: float, lr_factor: float) -> None:
        """After the penalty's warm-up, raise its coefficient while L0 is above target, lower it below; the
        target falls from the L0 at the end of the warm-up to target_l0 by l0_anneal_frac of the steps.

        The integral term alone lags the L0 it steers and overshoots (L0 swung between 0.1 and 40 around a
        target of 6 on planted data); the proportional term reacts at once and damps the swing."""
        cfg = self.cfg
        warm_end = round(self._warmup_frac() * self.total_steps)
        if (
            self.sae.cfg.arch not in ("relu", "jumprelu")
            or not cfg.target_l0_rate
            or self.steps_done < warm_end
        ):
            return
        if not self.l0_start:
            self.l0_start.fill_(max(l0, 1e-3))
        target = cfg.target_l0 or cfg.k
        anneal_end = round(cfg.l0_anneal_frac * self.total_steps)
        if self.steps_done < anneal_end:  # log-linearly from the L0 when steering began down to the target
            left = (anneal_end - self.steps_done) / max(1, anneal_end - warm_end)
            target *= max(1.0, self.l0_start.item() / target) ** left
        self.l0_error.fill_(max(-1.0, min(1.0, math.log(max(l0, 1e-3) / target))))
        self.sparsity_coeff *= math.exp(cfg.target_l0_rate * lr_factor * self.l0_error.item())
        self.sparsity_coeff.clamp_(min=self._start_coeff())

    def _count(self, out: TrainLoss, n_tokens: int) -> None:
        """Advance the step and the tokens since each latent fired; move the BatchTopK threshold towards
        a debiased moving average of the smallest kept activation."""
        self.steps_done += 1
        self.tokens_since_fired += n_tokens
        fired = torch.zeros_like(self.tokens_since_fired)
        fired[out.fired] = 1
        self.tokens_since_fired[distributed.all_reduce(fired, "max").bool()] = 0  # fired on any rank
        if self.sae.cfg.arch not in BATCH_ARCHS:
            return
        values = out.active_values
        smallest = values.min().double() if len(values) else torch.tensor(math.inf, device=values.device)
        smallest = distributed.all_reduce(smallest.reshape(1).double(), "min")[0]  # of the whole batch
        if math.isfinite(smallest.item()):
            lr = self.cfg.threshold_lr
            self.threshold_avg.mul_(1 - lr).add_(lr * smallest)
            self.threshold_updates += 1
            debiased = self.threshold_avg / (1 - (1 - lr) ** self.threshold_updates.item())
            self.sae.threshold.fill_(debiased.item())

    def dead_mask(self) -> Tensor:
        """Latents that have not fired in the last `cfg.dead_tokens` training tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens

    def dead_frac(self) -> float:
        return self.dead_mask().float().mean().item()

    def log_stats(self) -> dict[str, float]:
        """Means of loss, mse, fvu and l0 over the steps since the last call, with dead_frac and lr now."""
        means = {key: total / self._n_summed for key, total in self._sums.items()}
        self._sums, self._n_summed = {}, 0
        return {**means, "dead_frac": self.dead_frac(), "lr": self.lr}

    def state_dict(self) -> dict[str, Tensor]:
        """Weights, Adam moments and counters as flat named tensors: what a checkpoint saves."""
        tensors = {f"sae.{name}": t for name, t in self.sae.state_dict().items()}
        for index, entry in self.optimizer.state_dict()["state"].items():
            tensors.update({f"adam.{index}.{key}": value for key, value in entry.items()})
        tensors.update({f"state.{name}": getattr(self, name) for name in self.COUNTERS})
        if self.sae.cfg.arch == "jumprelu":
            tensors["state.log_threshold"] = self.log_threshold
        tensors["state.steps_done"] = torch.tensor(self.steps_done)
        return {name: t.detach().cpu().clone().contiguous() for name, t in tensors.items()}

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Continue from what `state_dict()` returned."""
        self.sae.load_state_dict({name[4:]: t for name, t in tensors.items() if name.startswith("sae.")})
        opt_state = self.optimizer.state_dict()
        for index in (i for group in opt_state["param_groups"] for i in group["params"]):
            entry = {key.split(".")[2]: t for key, t in tensors.items() if key.startswith(f"adam.{index}.")}
            if entry:
                opt_state["state"][index] = entry
        self.optimizer.load_state_dict(opt_state)
        for param, state in self.optimizer.state.items():  # fused Adam needs the parameter's memory layout
            for key in ("exp_avg", "exp_avg_sq"):
                if (
                    key in state and state[key].shape != param.shape
                ):  # saved before W_enc's Adam went row-major
                    state[key] = state[key].t()
                if key in state and state[key].stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(state[key])
        for name in self.COUNTERS:
            getattr(self, name).copy_(tensors[f"state.{name}"])
        if self.sae.cfg.arch == "jumprelu":
            with torch.no_grad():
                self.log_threshold.copy_(tensors["state.log_threshold"])
        self.steps_done = int(tensors["state.steps_done"])


def _batch_stats(x: Tensor, out: TrainLoss) -> dict[str, float]:
    """Loss, mse, fvu and l0 of the whole global batch: this rank's sums added to the others' in one
    all-reduce (summed in float64, so the variance survives a large mean; no float64 copies)."""
    n_local, d_in = x.shape
    f64 = torch.float64
    sums = torch.cat(
        [
            torch.stack(
                [
                    out.loss.detach().to(f64) * n_local,
                    (out.recon.detach() - x).pow(2).sum(dtype=f64),
                    x.pow(2).sum(dtype=f64),
                    torch.tensor(out.l0 * n_local, dtype=f64, device=x.device),
                ]
            ),
            x.sum(0, dtype=f64),
        ]
    )
    distributed.all_reduce(sums)
    n = n_local * distributed.world_size()
    loss_sum, sse, sum_sq, active = sums[:4].tolist()
    total_var = sum_sq - sums[4:].pow(2).sum().item() / n
    return {"loss": loss_sum / n, "mse": sse / (n * d_in), "fvu": sse / total_var, "l0": active / n}


@torch.no_grad()
def _drop_parallel_grad(W_dec) -> None:
    """Remove the gradient component along each unit decoder row: it would only change the norm."""
    along = torch.linalg.vecdot(W_dec.grad, W_dec)  # row-wise dots in one pass (einsum's bmm: 3x slower)
    W_dec.grad.addcmul_(along.unsqueeze(1), W_dec, value=-1)  # in place: no [d_sae, d_in] temporaries


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
