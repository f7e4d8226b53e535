"""Sparse TopK autograd against dense autograd in float64; the exact batch top-n."""

import pytest
import torch
import torch.nn.functional as F

from saelib.losses import topk_loss
from saelib.sae import SAE, SAEConfig
from saelib.sparse_ops import SparseDecode, SparseEncode, batch_top_indices, row_offsets


@pytest.mark.parametrize("batch_top", [False, True])
def test_sparse_autograd_matches_dense_reference(batch_top):
    torch.manual_seed(0)
    n, d_in, d_sae, k = 24, 10, 30, 4
    x = torch.randn(n, d_in, dtype=torch.float64)
    target = torch.randn(n, d_in, dtype=torch.float64)
    b_dec = torch.randn(d_in, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(d_in, d_sae, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(d_sae, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(d_sae, d_in, dtype=torch.float64, requires_grad=True)
    params = (b_dec, W_enc, b_enc, W_dec)

    def select(pre):
        if batch_top:  # uneven counts per row, some rows possibly empty
            flat = pre.flatten().topk(n * k).indices.sort().values
            return flat // d_sae, flat % d_sae, pre.flatten()[flat]
        top = pre.topk(k, dim=1)
        return torch.arange(n).repeat_interleave(k), top.indices.flatten(), top.values.flatten()

    values, rows, cols = SparseEncode.apply(x, b_dec, W_enc, b_enc, select, torch.float64)
    recon = SparseDecode.apply(F.relu(values), W_dec, rows, cols, row_offsets(rows, n))
    (recon - target).pow(2).sum().backward()
    sparse_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    pre = (x - b_dec) @ W_enc + b_enc
    mask = torch.zeros_like(pre)
    mask[rows, cols] = 1
    dense_recon = (F.relu(pre) * mask) @ W_dec
    (dense_recon - target).pow(2).sum().backward()
    assert torch.allclose(recon, dense_recon, atol=1e-10)
    for sparse, p in zip(sparse_grads, params):
        assert torch.allclose(sparse, p.grad, atol=1e-9)


def test_row_offsets_point_at_each_rows_first_entry():
    rows = torch.tensor([0, 0, 2, 2, 2, 4])
    assert row_offsets(rows, 5).tolist() == [0, 2, 2, 5, 5, 6]


def test_batch_top_indices_is_exact():
    values = torch.randn(50_000, generator=torch.Generator().manual_seed(1))
    for n in (1, 37, 4000):
        assert torch.equal(batch_top_indices(values, n).sort().values, values.topk(n).indices.sort().values)


def test_batch_top_indices_small_and_tied_inputs():
    """Few values (no sampling) and many ties at the cut-off still give n distinct indices of the top n."""
    assert sorted(batch_top_indices(torch.tensor([3.0, 1.0, 2.0]), 2).tolist()) == [0, 2]
    tied = torch.zeros(300_000)
    tied[:10] = 1.0
    top = batch_top_indices(tied, 50)
    assert len(top.unique()) == 50 and set(range(10)) <= set(top.tolist())


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_topk_loss_with_auxk_matches_dense_autograd(arch):
    """The whole TopK loss (main reconstruction + AuxK on dead latents) through the sparse path equals
    the same loss written densely, gradients included, in float64."""
    n, d_in, d_sae, k, k_aux = 32, 8, 40, 3, 5
    gen = torch.Generator().manual_seed(2)
    sae = SAE(SAEConfig(d_in, d_sae, arch=arch, k=k)).double()
    with torch.no_grad():
        for param in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * 0.5)
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::3] = True
    out = topk_loss(sae, x, dead, k_aux, aux_coeff=0.5, dtype=torch.float64)
    out.loss.backward()
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    sparse_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    mask = torch.zeros_like(pre, dtype=torch.bool)
    if arch == "topk":
        mask.scatter_(1, pre.topk(k, dim=1).indices, True)
    else:
        mask.view(-1)[pre.flatten().topk(n * k).indices] = True
    recon = (F.relu(pre) * mask) @ sae.W_dec + sae.b_dec
    dead_cols = dead.nonzero().squeeze(1)
    aux_mask = torch.zeros_like(mask)
    aux_mask[:, dead_cols] = torch.zeros(n, len(dead_cols), dtype=torch.bool).scatter_(
        1, pre[:, dead_cols].topk(k_aux, dim=1).indices, True
    )
    aux_recon = (F.relu(pre) * aux_mask) @ sae.W_dec
    aux_loss = (aux_recon - (x - recon).detach()).pow(2).sum() / n
    loss = (recon - x).pow(2).sum() / n + 0.5 * aux_loss
    loss.backward()
    assert torch.allclose(out.loss, loss, atol=1e-10)
    assert torch.allclose(out.recon, recon, atol=1e-10)
    assert torch.equal(out.fired, (F.relu(pre) * mask > 0).any(0))
    for sparse, p in zip(sparse_grads, params):
        assert torch.allclose(sparse, p.grad, atol=1e-9)
