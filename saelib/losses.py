"""What each arch minimises while training, on a normalised batch x [batch, d_in].

- topk / batchtopk: reconstruction error, plus AuxK on the dead latents (Gao et al., 2024), through the
  sparse ops so that only the selected latents cost anything past the encoder GEMM;
- matryoshka: the BatchTopK selection, and the mean reconstruction error of each prefix of the
  dictionary (Bussmann et al., 2025), all prefixes summed from one decode of the selected latents;
- relu: reconstruction error + L1 of the latents weighted by decoder row norms (Anthropic, April 2024),
  in one autograd node with its backward written out (`ReLULoss`);
- jumprelu: reconstruction error + L0, with straight-through threshold gradients (Rajamanoharan et
  al., 2024), likewise in one node (`JumpReLULoss`);
- both: a pull of the dead latents' pre-activations up to their thresholds (0 for relu; Anthropic,
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


def topk_loss(
    sae: SAE, x: Tensor, dead: Tensor, k_aux: int, aux_coeff: float, dtype: torch.dtype = torch.float32
) -> TrainLoss:
    """TopK / BatchTopK / Matryoshka: one dense GEMM (in `dtype`), the rest on the selected latents only.

    The top `k_aux` of the `dead` latents (a [d_sae] mask) of each token learn to predict what the
    live ones missed (Gao et al., 2024, appendix A.2), weighted down while fewer than k_aux are dead.
    """
    n_rows, d_sae, k = len(x), sae.cfg.d_sae, sae.cfg.k
    n_dead = int(dead.sum())
    k_aux_now = min(k_aux, n_dead)
    n_main = n_rows * k

    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        nonlocal n_main  # BatchTopK under torchrun: this rank's share of the global top varies
        if sae.cfg.arch not in BATCH_ARCHS:
            top = pre.topk(k, dim=1, sorted=False)
            rows = torch.arange(n_rows, device=x.device).repeat_interleave(k)
            cols, values = top.indices.flatten(), top.values.flatten()
        else:  # the n_rows * k largest of the whole batch (all ranks' rows under torchrun), in row order
            flat = global_batch_top_indices(pre.flatten(), n_main).sort().values
            rows, cols, values = flat // d_sae, flat % d_sae, pre.flatten()[flat]
            n_main = len(flat)
        if k_aux_now == 0:
            return rows, cols, values
        dead_cols = dead.nonzero().squeeze(1)  # topk over the dead columns only: usually few
        aux = pre[:, dead_cols].topk(k_aux_now, dim=1, sorted=False)
        aux_rows = torch.arange(n_rows, device=x.device).repeat_interleave(k_aux_now)
        aux_cols = dead_cols[aux.indices.flatten()]
        return (
            torch.cat([rows, aux_rows]),
            torch.cat([cols, aux_cols]),
            torch.cat([values, aux.values.flatten()]),
        )

    values, rows, cols = SparseEncode.apply(x, sae.b_dec, sae.W_enc, sae.b_enc, select, dtype)
    main_rows, main_cols, main_values = rows[:n_main], cols[:n_main], F.relu(values[:n_main])
    if sae.cfg.arch == "matryoshka":
        recon, loss = _prefix_recons(sae, x, main_rows, main_cols, main_values)
    else:
        recon = SparseDecode.apply(
            main_values, sae.W_dec, main_rows, main_cols, row_offsets(main_rows, n_rows)
        )
        recon = recon + sae.b_dec
        loss = F.mse_loss(recon, x, reduction="sum") / n_rows
    if k_aux_now:
        aux_rows, aux_cols = rows[n_main:], cols[n_main:]
        aux_recon = SparseDecode.apply(
            F.relu(values[n_main:]), sae.W_dec, aux_rows, aux_cols, row_offsets(aux_rows, n_rows)
        )
        aux_loss = F.mse_loss(aux_recon, (x - recon).detach(), reduction="sum") / n_rows
        loss = loss + aux_coeff * min(1.0, n_dead / k_aux) * aux_loss
    with torch.no_grad():
        active = main_values > 0
        fired = torch.zeros(d_sae, device=x.device).index_add_(0, main_cols, active.float()) > 0
        active_values = main_values[active] if sae.cfg.arch in BATCH_ARCHS else None
        l0 = active.sum().item() / n_rows
    return TrainLoss(loss, recon.detach(), l0, fired, active_values)


def global_batch_top_indices(values: Tensor, n_per_rank: int) -> Tensor:
    """This rank's entries among the n_per_rank * world largest of all ranks' `values` together.

    Any entry of the global top lies in its own rank's top n_global, so each rank shares only its top
    n_global values; the smallest of the global top is the cut-off. Values equal to the cut-off are
    common (a repeated context gives identical activations), so they fill the remaining slots in rank
    order: exactly n_global entries in all, as in one process, and tied duplicates are interchangeable.
    """
    world = distributed.world_size()
    if world == 1:
        return batch_top_indices(values, n_per_rank)
    n_global = n_per_rank * world
    candidates = values[batch_top_indices(values, min(n_global, len(values)))]
    cutoff = distributed.all_gather(candidates).topk(n_global, sorted=False).values.min()
    above, tied = (values > cutoff).nonzero().squeeze(1), (values == cutoff).nonzero().squeeze(1)
    counts = distributed.all_gather(torch.tensor([[len(above), len(tied)]], device=values.device))
    free = n_global - int(counts[:, 0].sum()) - int(counts[: distributed.rank(), 1].sum())
    return torch.cat([above, tied[: max(0, free)]])


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
    loss, recon = PrefixErrors.apply(per_group.view(n_rows, n_groups, -1), sae.b_dec, x)
    return recon, loss


class PrefixErrors(torch.autograd.Function):
    """Mean over prefixes of each prefix's squared error (summed over d_in, averaged over tokens), from the
    per-group decodes [n, n_groups, d_in], and the full reconstruction (without gradient).

    The running sum over groups, and its reverse in backward, are a few in-place adds of [n, d_in] slices:
    torch.cumsum along that short strided axis and its flipped backward took a fifth of a Matryoshka step.
    """

    @staticmethod
    def forward(ctx, per_group, b_dec, x):
        n, n_groups, _ = per_group.shape
        errors = per_group.clone()  # errors[:, g] = b_dec + groups 0..g - x: prefix g's error
        errors[:, 0] += b_dec - x
        for group in range(1, n_groups):
            errors[:, group] += errors[:, group - 1]
        flat = errors.view(-1)
        loss = torch.dot(flat, flat) / (n * n_groups)
        ctx.save_for_backward(errors)
        recon = errors[:, -1] + x
        ctx.mark_non_differentiable(recon)
        return loss, recon

    @staticmethod
    def backward(ctx, grad_loss, _grad_recon):
        (errors,) = ctx.saved_tensors
        n, n_groups, _ = errors.shape
        grad = errors * (2 * grad_loss / (n * n_groups))
        for group in range(n_groups - 2, -1, -1):  # group g's decode is in every prefix from g on
            grad[:, group] += grad[:, group + 1]
        return grad, grad[:, 0].sum(0), None


def dense_loss(
    sae: SAE,
    x: Tensor,
    coeff: float,
    threshold: Tensor | None = None,
    bandwidth: float = 0.05,
    dead: Tensor | None = None,
    preact_coeff: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> TrainLoss:
    """ReLU (coeff weighs the L1 term) / JumpReLU (coeff weighs L0; `threshold` is the trainer's
    differentiable copy, `bandwidth` the width of the straight-through kernel): dense GEMMs in `dtype`.
    The pre-activations of the `dead` latents are pulled up to the threshold (0 for relu) with weight
    `preact_coeff`."""
    if sae.cfg.arch == "jumprelu":
        dead_cols = dead.nonzero().squeeze(1) if preact_coeff and dead is not None else None
        settings = (coeff, bandwidth, preact_coeff, dead_cols, dtype)
        loss, recon, counts = JumpReLULoss.apply(
            x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, threshold, *settings
        )
        return TrainLoss(loss, recon, counts.sum().item() / len(x), counts > 0)
    dead_cols = dead.nonzero().squeeze(1) if preact_coeff and dead is not None and dead.any() else None
    loss, recon, counts = ReLULoss.apply(
        x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, coeff, preact_coeff, dead_cols, dtype
    )
    return TrainLoss(loss, recon, counts.sum().item() / len(x), counts > 0)


class ReLULoss(torch.autograd.Function):
    """The ReLU training loss in one autograd node, with its backward written out:

        pre     = (x - b_dec) @ W_enc + b_enc                 one GEMM in `dtype`
        latents = relu(pre)
        loss    = |latents @ W_dec + b_dec - x|^2 + coeff * sum_i latents_i |W_dec[i]|
                  + preact_coeff * sum over dead latents of relu(-pre)                  (means over tokens)

    Written under autocast the same loss copied [batch, d_sae] tensors between dtypes and made a dozen
    elementwise passes over them; here only the latents ([batch, d_sae], in `dtype`) are kept for backward,
    ReLU's mask is read back from them, and the L1 term's gradients reduce to per-latent sums. Returns the
    loss, the reconstruction and how many tokens each latent fired on (both without gradient).
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, coeff, preact_coeff, dead_cols, dtype):
        n = len(x)
        centred = (x - b_dec).to(dtype)
        latents = torch.addmm(b_enc.to(dtype), centred, W_enc.to(dtype))
        dead_pre = latents[:, dead_cols].to(x.dtype) if dead_cols is not None else None
        latents.relu_()
        counts = (latents > 0).view(torch.uint8).sum(0, dtype=torch.int32)
        W_dec_d = W_dec.to(dtype)
        recon = torch.mm(latents, W_dec_d).to(x.dtype) + b_dec
        diff = recon - x
        norms = W_dec.norm(dim=1)
        act_sums = latents.sum(0, dtype=x.dtype)  # the L1 term is act_sums @ norms
        loss = diff.pow(2).sum() + coeff * (act_sums @ norms)
        if dead_pre is not None:
            loss = loss + preact_coeff * (-dead_pre).clamp_min(0).sum()
        ctx.save_for_backward(
            centred, W_enc, W_dec, W_dec_d, latents, diff, norms, act_sums, dead_pre, dead_cols
        )
        ctx.settings = coeff, preact_coeff
        ctx.mark_non_differentiable(recon, counts)
        return loss / n, recon, counts

    @staticmethod
    def backward(ctx, grad_loss, _grad_recon, _grad_counts):
        centred, W_enc, W_dec, W_dec_d, latents, diff, norms, act_sums, dead_pre, dead_cols = (
            ctx.saved_tensors
        )
        coeff, preact_coeff = ctx.settings
        scale = float(grad_loss) / len(latents)  # d loss / d (the sums over tokens)
        dtype = latents.dtype
        grad_recon = diff * (2 * scale)
        grad_recon_d = grad_recon.to(dtype)
        grad_W_dec = torch.mm(latents.t(), grad_recon_d).to(W_dec.dtype)
        # the L1 term's share: d |W_dec[i]| / d W_dec[i] = W_dec[i] / |W_dec[i]|, times latent i's sum
        grad_W_dec += (coeff * scale) * (act_sums / norms).unsqueeze(1) * W_dec
        grad = torch.mm(grad_recon_d, W_dec_d.t())  # d loss / d latents
        grad += ((coeff * scale) * norms).to(dtype)
        grad = torch.ops.aten.threshold_backward(grad, latents, 0)  # ReLU's mask, read from the latents
        if dead_cols is not None:
            grad[:, dead_cols] -= ((dead_pre < 0) * (preact_coeff * scale)).to(dtype)
        grad_W_enc, grad_b_enc, grad_b_dec = _encoder_grads(grad, grad_recon, centred, W_enc)
        return None, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, None, None, None, None


def _encoder_grads(
    grad_pre: Tensor, grad_recon: Tensor, centred: Tensor, W_enc: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of W_enc, b_enc and b_dec for the dense losses, from d loss / d pre and d loss / d recon:
    pre = (x - b_dec) @ W_enc + b_enc and recon = ... + b_dec, so b_dec gets both paths. W_enc's gradient
    comes out in its latent-major layout, and b_enc's is summed in W_enc's precision."""
    grad_W_enc = torch.mm(grad_pre.t(), centred).to(W_enc.dtype).t()
    grad_b_enc = grad_pre.sum(0, dtype=W_enc.dtype)
    return grad_W_enc, grad_b_enc, grad_recon.sum(0) - W_enc @ grad_b_enc


class JumpReLULoss(torch.autograd.Function):
    """The whole JumpReLU training loss in one autograd node, with its backward written out.

        pre     = (x - b_dec) @ W_enc + b_enc                 one GEMM in `dtype`
        latents = pre * H(pre - threshold)
        loss    = |latents @ W_dec + b_dec - x|^2 + coeff * sum H(pre - threshold)
                  + preact_coeff * sum over dead latents of relu(threshold - pre)     (means over tokens)

    H's straight-through pseudo-gradient is the rectangle kernel K(u) = 1{|u| < 1/2} of width
    `bandwidth` (Rajamanoharan et al., 2024): d latents / d threshold = -threshold * K / bandwidth, and
    d H / d threshold = -K / bandwidth. The L0 term reaches the threshold only, as in the paper: letting
    its pseudo-gradient push the pre-activations near the threshold down too (Anthropic, January 2025)
    cost FVU and doubled the dense latents on the demo store (6 epochs: FVU 0.167 -> 0.162, dense 1.6% ->
    0.7% without it), and the log-thresholds follow fast enough alone. `pre` and the latents ([batch,
    d_sae], in `dtype`) are kept for backward, so no mask is computed twice. Returns the loss, the
    reconstruction and how many tokens each latent fired on (both without gradient).
    """

    @staticmethod
    def forward(
        ctx, x, W_enc, b_enc, W_dec, b_dec, threshold, coeff, bandwidth, preact_coeff, dead_cols, dtype
    ):
        n = len(x)
        centred = (x - b_dec).to(dtype)
        pre = torch.addmm(b_enc.to(dtype), centred, W_enc.to(dtype))
        # the big elementwise passes stay in `dtype`: mixing in a float32 threshold would copy pre
        silent = pre <= threshold.to(dtype)
        counts = n - silent.view(torch.uint8).sum(0, dtype=torch.int32)  # half the time of a bool sum
        latents = pre.masked_fill(silent, 0)
        del silent
        W_dec_d = W_dec.to(dtype)
        recon = torch.mm(latents, W_dec_d).to(x.dtype) + b_dec
        diff = recon - x
        loss = diff.pow(2).sum() + coeff * counts.sum()
        if dead_cols is not None and len(dead_cols):
            loss = loss + preact_coeff * (threshold[dead_cols] - pre[:, dead_cols]).clamp_min(0).sum()
        ctx.save_for_backward(centred, W_enc, W_dec, W_dec_d, pre, latents, threshold, diff, dead_cols)
        ctx.settings = coeff, bandwidth, preact_coeff
        ctx.mark_non_differentiable(recon, counts)
        return loss / n, recon, counts

    @staticmethod
    def backward(ctx, grad_loss, _grad_recon, _grad_counts):
        centred, W_enc, W_dec, W_dec_d, pre, latents, threshold, diff, dead_cols = ctx.saved_tensors
        coeff, bandwidth, preact_coeff = ctx.settings
        n, d_sae = pre.shape
        scale = float(grad_loss) / n  # d loss / d (the sums over tokens)
        dtype = pre.dtype
        grad_recon = diff * (2 * scale)
        grad_recon_d = grad_recon.to(dtype)
        threshold_d = threshold.to(dtype)
        grad_W_dec = torch.mm(latents.t(), grad_recon_d).to(W_dec.dtype)
        grad = torch.mm(grad_recon_d, W_dec_d.t())  # d loss / d latents
        # the kernel's window holds few (token, latent) pairs: gather them once instead of masking all
        near = ((pre - threshold_d).abs_() < bandwidth / 2).view(-1).nonzero().squeeze(1)
        near_cols = near % d_sae
        kernel_sum = torch.zeros_like(threshold).index_add_(
            0, near_cols, grad.view(-1)[near].to(threshold.dtype)
        )
        l0_weight = coeff * scale / bandwidth
        grad_threshold = -(threshold / bandwidth) * kernel_sum
        grad_threshold -= l0_weight * torch.bincount(near_cols, minlength=d_sae)
        # thresholds are positive, so a latent is active exactly where it is nonzero: ReLU's backward mask
        grad = torch.ops.aten.threshold_backward(grad, latents, 0)
        if dead_cols is not None and len(dead_cols):
            below = (pre[:, dead_cols] < threshold[dead_cols]).to(dtype) * (preact_coeff * scale)
            grad[:, dead_cols] -= below
            grad_threshold[dead_cols] += below.sum(0, dtype=threshold.dtype)
        grad_W_enc, grad_b_enc, grad_b_dec = _encoder_grads(grad, grad_recon, centred, W_enc)
        return (
            None,
            grad_W_enc,
            grad_b_enc,
            grad_W_dec,
            grad_b_dec,
            grad_threshold,
            None,
            None,
            None,
            None,
            None,
        )
