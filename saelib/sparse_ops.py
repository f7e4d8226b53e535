"""The sparse TopK training path: autograd functions whose backward only touches the selected latents.

A TopK step needs one dense GEMM (the encoder's forward); the decoder's forward and both backwards
only involve the k selected (token, latent) pairs of each row, so they run as embedding_bag sums and
one sampled product instead of dense GEMMs (Gao et al., 2024, appendix; sparsify's fused encoder).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


def row_offsets(rows: Tensor, n_rows: int) -> Tensor:
    """CSR row pointer [n_rows + 1] of entries sorted by row."""
    offsets = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=offsets[1:])
    return offsets


def _sum_by_latent(rows: Tensor, cols: Tensor, weights: Tensor, dense: Tensor, d_sae: int) -> Tensor:
    """out[j] = sum over entries n with cols[n] == j of weights[n] * dense[rows[n]]   -> [d_sae, d].

    This is S^T @ dense for the sparse matrix S = (rows, cols, weights), done as one embedding_bag over
    the entries sorted by latent, so no [n_entries, d] product is ever materialised.
    """
    order = cols.argsort()
    return F.embedding_bag(
        rows[order],
        dense,
        row_offsets(cols, d_sae),
        mode="sum",
        per_sample_weights=weights[order],
        include_last_offset=True,
    )


class SparseEncode(torch.autograd.Function):
    """values = ((x - b_dec) @ W_enc + b_enc)[rows, cols] for the entries `select(pre)` picks.

    Forward is the one dense GEMM of a TopK step, in `dtype`: bfloat16 picks the latents and gives their
    values at bf16 precision; the values returned, the weights and the gradients keep W_enc's dtype.
    `select(pre)` returns (rows, cols, values) with values = pre[rows, cols] (topk hands them over
    without a second gather). The gradient of the loss reaches only the selected pre-activations, so
    backward is sparse sums instead of dense GEMMs, with G the sparse [batch, d_sae] gradient:
    dW_enc = (x - b_dec)^T @ G, db_enc = column sums of G, db_dec = -W_enc @ db_enc (a matrix-vector
    product: no [d_in, d_sae] outer product to add). `x` is data and gets no gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, b_dec: Tensor, W_enc: Tensor, b_enc: Tensor, select, dtype: torch.dtype):
        centred = x - b_dec
        pre = torch.addmm(b_enc.to(dtype), centred.to(dtype), W_enc.to(dtype))
        rows, cols, values = select(pre)
        del pre  # the largest tensor of the step: free it before backward
        ctx.save_for_backward(centred, W_enc, rows, cols)
        ctx.mark_non_differentiable(rows, cols)
        return values.to(W_enc.dtype), rows, cols

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_rows, _grad_cols):
        centred, W_enc, rows, cols = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        grad_W_enc = _sum_by_latent(rows, cols, grad_values, centred, d_sae).t()
        grad_b_enc = torch.zeros(d_sae, dtype=grad_values.dtype, device=grad_values.device)
        grad_b_enc.index_add_(0, cols, grad_values)
        return None, -(W_enc @ grad_b_enc), grad_W_enc, grad_b_enc, None, None


class SparseDecode(torch.autograd.Function):
    """recon[b] = sum over entries n in row b of values[n] * W_dec[cols[n]]; entries sorted by row.

    Forward is an embedding_bag (k rows of W_dec per token instead of a dense GEMM); backward gives
    the values' gradient as a sampled dense-dense product and W_dec's gradient touches only the
    selected rows.
    """

    @staticmethod
    def forward(ctx, values: Tensor, W_dec: Tensor, rows: Tensor, cols: Tensor, offsets: Tensor):
        ctx.save_for_backward(values, W_dec, rows, cols, offsets)
        return F.embedding_bag(
            cols, W_dec, offsets, mode="sum", per_sample_weights=values, include_last_offset=True
        )

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, W_dec, rows, cols, offsets = ctx.saved_tensors
        with warnings.catch_warnings():  # "sparse CSR support is in beta" (used for this one product)
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(
                offsets, cols, torch.zeros_like(values), size=(len(grad_out), len(W_dec))
            )
            grad_values = torch.sparse.sampled_addmm(pattern, grad_out, W_dec.t()).values()
        grad_W_dec = _sum_by_latent(rows, cols, values, grad_out, len(W_dec))
        return grad_values, grad_W_dec, None, None, None


def batch_top_indices(values: Tensor, n: int) -> Tensor:
    """Indices of the n largest entries of a flat tensor (BatchTopK), 3-4x faster than topk over all of it.

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
