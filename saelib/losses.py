"""What each arch minimises while training, on a normalised batch x [batch, d_in].

- topk / batchtopk: reconstruction error, plus AuxK on the dead latents (Gao et al., 2024), through the
  sparse ops so that only the selected latents cost anything past the encoder GEMM;
- matryoshka: the BatchTopK selection, and the mean reconstruction error of each prefix of the
  dictionary (Bussmann et al., 2025), all prefixes summed from one decode of the selected latents;
- relu: reconstruction error + L1 of the latents weighted by decoder row norms (Anthropic, April 2024);
- jumprelu: reconstruction error + L0, with straight-through threshold gradients (Rajamanoharan et
  al., 2024), plus a pull of the dead latents' pre-activations up to their thresholds (Anthropic,
  January 2025) so they fire again.

Each returns a `TrainLoss`; the trainer steps the optimizer and keeps the counters (which latents
fired, the BatchTopK threshold) from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saelib import distributed
from saelib.sae import BATCH_ARCHS, SAE
from saelib.sparse_ops import SparseDecode, SparseEncode, batch_top_indices, row_offsets


@dataclass
class TrainLoss:
    loss: Tensor  # scalar, to backpropagate
    recon: Tensor  # [batch, d_in]
    l0: float  # active latents per token
    fired: Tensor  # the latents active in this batch: indices or a [d_sae] mask
    active_values: Tensor | None = None  # batchtopk: the kept latent values, for the threshold


def topk_loss(sae: SAE, x: Tensor, dead: Tensor, k_aux: int, aux_coeff: float) -> TrainLoss:
    """TopK / BatchTopK / Matryoshka: one dense GEMM, everything else on the selected latents only.

    The top `k_aux` of the `dead` latents (a [d_sae] mask) of each token learn to predict what the
    live ones missed (Gao et al., 2024, appendix A.2), weighted down while fewer than k_aux are dead.
    """
    n_rows, d_sae, k = len(x), sae.cfg.d_sae, sae.cfg.k
    n_dead = int(dead.sum())
    k_aux_now = min(k_aux, n_dead)
    n_main = n_rows * k

    def select(pre: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal n_main  # BatchTopK under torchrun: this rank's share of the global top varies
        if sae.cfg.arch not in BATCH_ARCHS:
            rows = torch.arange(n_rows, device=x.device).repeat_interleave(k)
            cols = pre.topk(k, dim=1, sorted=False).indices.flatten()
        else:  # the n_rows * k largest of the whole batch (all ranks' rows under torchrun), in row order
            flat = global_batch_top_indices(pre.flatten(), n_main).sort().values
            rows, cols = flat // d_sae, flat % d_sae
            n_main = len(flat)
        if k_aux_now == 0:
            return rows, cols
        dead_cols = dead.nonzero().squeeze(1)  # topk over the dead columns only: usually few
        aux_cols = dead_cols[pre[:, dead_cols].topk(k_aux_now, dim=1, sorted=False).indices.flatten()]
        return torch.cat(
            [rows, torch.arange(n_rows, device=x.device).repeat_interleave(k_aux_now)]
        ), torch.cat([cols, aux_cols])

    # (x - b_dec) @ W_enc + b_enc, with b_dec's share as a bias so no gradient flows through x
    bias = sae.b_enc - sae.b_dec @ sae.W_enc
    values, rows, cols = SparseEncode.apply(x, sae.W_enc, bias, select)
    main_rows, main_cols, main_values = rows[:n_main], cols[:n_main], F.relu(values[:n_main])
    if sae.cfg.arch == "matryoshka":
        recon, loss = _prefix_recons(sae, x, main_rows, main_cols, main_values)
    else:
        recon = SparseDecode.apply(
            main_values, sae.W_dec, main_rows, main_cols, row_offsets(main_rows, n_rows)
        )
        recon = recon + sae.b_dec
        loss = (recon - x).pow(2).sum(1).mean()
    if k_aux_now:
        aux_rows, aux_cols = rows[n_main:], cols[n_main:]
        aux_recon = SparseDecode.apply(
            F.relu(values[n_main:]), sae.W_dec, aux_rows, aux_cols, row_offsets(aux_rows, n_rows)
        )
        aux_loss = (aux_recon - (x - recon).detach()).pow(2).sum(1).mean()
        loss = loss + aux_coeff * min(1.0, n_dead / k_aux) * aux_loss
    with torch.no_grad():
        active = main_values > 0
        active_values = main_values[active]
    return TrainLoss(loss, recon, len(active_values) / n_rows, main_cols[active].unique(), active_values)


def _prefix_recons(sae: SAE, x: Tensor, rows: Tensor, cols: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Full reconstruction and the mean over prefixes of each prefix's squared error.

    One decode sums each token's selected latents per group (the latents between two prefix ends) into
    [n_rows, n_groups, d_in]; a cumulative sum over groups gives every prefix's reconstruction, so the
    nested prefixes cost no more than one TopK decode.
    """
    n_rows, ends = len(x), torch.tensor(sae.cfg.prefixes, device=x.device)
    n_groups = len(ends)
    bags = rows * n_groups + torch.searchsorted(ends, cols, right=True)
    order = bags.argsort(stable=True)
    bags = bags[order]
    per_group = SparseDecode.apply(
        values[order], sae.W_dec, bags, cols[order], row_offsets(bags, n_rows * n_groups)
    )
    prefix_recons = per_group.view(n_rows, n_groups, -1).cumsum(1) + sae.b_dec
    loss = (prefix_recons - x[:, None]).pow(2).sum(2).mean()
    return prefix_recons[:, -1], loss


def global_batch_top_indices(values: Tensor, n_per_rank: int) -> Tensor:
    """This rank's entries among the n_per_rank * world largest of all ranks' `values` together.

    Any entry of the global top lies in its own rank's top n_global, so each rank shares only its top
    n_global values; the smallest of the global top is the cut-off. (A tie at the cut-off keeps all
    tied entries, where one process would keep an arbitrary subset.)
    """
    world = distributed.world_size()
    if world == 1:
        return batch_top_indices(values, n_per_rank)
    n_global = n_per_rank * world
    candidates = values[batch_top_indices(values, min(n_global, len(values)))]
    cutoff = distributed.all_gather(candidates).topk(n_global, sorted=False).values.min()
    return (values >= cutoff).nonzero().squeeze(1)


def dense_loss(
    sae: SAE,
    x: Tensor,
    coeff: float,
    threshold: Tensor | None = None,
    bandwidth: float = 0.05,
    dead: Tensor | None = None,
    preact_coeff: float = 0.0,
) -> TrainLoss:
    """ReLU (coeff weighs the L1 term) / JumpReLU (coeff weighs L0; `threshold` is the trainer's
    differentiable copy, `bandwidth` the width of the straight-through kernel; the pre-activations of
    the `dead` latents are pulled up to the threshold with weight `preact_coeff`): dense GEMMs."""
    pre = torch.addmm(sae.b_enc - sae.b_dec @ sae.W_enc, x, sae.W_enc)
    if sae.cfg.arch == "relu":
        latents = F.relu(pre)
        sparsity = (latents @ sae.W_dec.norm(dim=1)).mean()
    else:
        latents = _JumpReLU.apply(pre, threshold, bandwidth)
        sparsity = _Step.apply(pre, threshold, bandwidth).sum(1).mean()
    recon = latents @ sae.W_dec + sae.b_dec
    loss = (recon - x).pow(2).sum(1).mean() + coeff * sparsity
    if preact_coeff and dead is not None and dead.any():
        loss = loss + preact_coeff * F.relu(threshold[dead] - pre[:, dead]).sum(1).mean()
    with torch.no_grad():
        active = latents > 0
    return TrainLoss(loss, recon.detach(), active.sum().item() / len(x), active.any(0))


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
