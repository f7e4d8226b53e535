"""The fused JumpReLU loss against the same loss written plainly with autograd, in float64."""

import torch

from saelib.losses import PrefixErrors, dense_loss
from saelib.sae import SAE, SAEConfig


def straight_through_step(u: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(u) forward; backward the rectangle kernel K(u / bandwidth) / bandwidth (the slope of the ramp)."""
    ramp = (u / bandwidth + 0.5).clamp(0, 1)
    return (u > 0).to(u.dtype) + ramp - ramp.detach()


def reference_loss(sae, x, coeff, threshold, bandwidth, dead, preact_coeff):
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    # latents = pre * H(pre - threshold): the kernel reaches the threshold only, as threshold * K / bandwidth
    jump = straight_through_step(pre.detach() - threshold, bandwidth)
    latents = pre * (pre > threshold) + threshold.detach() * (jump - jump.detach())
    recon = latents @ sae.W_dec + sae.b_dec
    l0 = straight_through_step(pre.detach() - threshold, bandwidth).sum(1)  # reaches the threshold only
    pull = (threshold[dead] - pre[:, dead]).clamp_min(0).sum(1)
    return ((recon - x).pow(2).sum(1) + coeff * l0 + preact_coeff * pull).mean(), recon


def test_fused_jumprelu_loss_matches_plain_autograd():
    torch.manual_seed(0)
    n, d_in, d_sae, bandwidth = 64, 10, 40, 0.5
    sae = SAE(SAEConfig(d_in, d_sae, arch="jumprelu")).double()
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(n, d_in, dtype=torch.float64)
    log_threshold = torch.nn.Parameter(torch.randn(d_sae, dtype=torch.float64) * 0.3)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::7] = True
    settings = dict(coeff=0.3, bandwidth=bandwidth, dead=dead, preact_coeff=0.2)
    params = [*sae.parameters(), log_threshold]

    fused = dense_loss(sae, x, threshold=log_threshold.exp(), dtype=torch.float64, **settings)
    fused.loss.backward()
    fused_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    loss, recon = reference_loss(sae, x, threshold=log_threshold.exp(), **settings)
    loss.backward()

    assert torch.allclose(fused.loss, loss, atol=1e-10) and torch.allclose(fused.recon, recon, atol=1e-10)
    pre = sae.pre_acts(x)
    in_window = ((pre - log_threshold.exp()).abs() < bandwidth / 2).sum()
    assert in_window > 50  # the kernel terms are exercised
    for name, ours, p in zip(["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"], fused_grads, params):
        assert torch.allclose(ours, p.grad, atol=1e-9), name
    assert fused.l0 == (pre > log_threshold.exp()).sum().item() / n


def test_fused_relu_loss_matches_plain_autograd():
    torch.manual_seed(1)
    n, d_in, d_sae = 64, 10, 40
    sae = SAE(SAEConfig(d_in, d_sae, arch="relu")).double()
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(n, d_in, dtype=torch.float64)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::7] = True
    coeff, preact_coeff = 0.3, 0.2

    fused = dense_loss(sae, x, coeff, dead=dead, preact_coeff=preact_coeff, dtype=torch.float64)
    fused.loss.backward()
    fused_grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad(set_to_none=True)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    latents = torch.relu(pre)
    recon = latents @ sae.W_dec + sae.b_dec
    l1 = latents @ sae.W_dec.norm(dim=1)  # weighted by decoder norms (Anthropic, April 2024)
    pull = (-pre[:, dead]).clamp_min(0).sum(1)
    loss = ((recon - x).pow(2).sum(1) + coeff * l1 + preact_coeff * pull).mean()
    loss.backward()

    assert torch.allclose(fused.loss, loss, atol=1e-10) and torch.allclose(fused.recon, recon, atol=1e-10)
    assert 0 < (pre[:, dead] < 0).float().mean() < 1 and 0 < (pre > 0).float().mean() < 1  # both sides hit
    for name, ours, p in zip(["W_enc", "b_enc", "W_dec", "b_dec"], fused_grads, sae.parameters()):
        assert torch.allclose(ours, p.grad, atol=1e-9), name
    assert fused.l0 == (pre > 0).sum().item() / n
    assert torch.equal(fused.fired, (pre > 0).any(0))


def test_prefix_errors_match_the_cumulative_sum_written_plainly():
    torch.manual_seed(2)
    n, n_groups, d_in = 16, 4, 6
    per_group = torch.randn(n, n_groups, d_in, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(d_in, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, d_in, dtype=torch.float64)

    loss, recon = PrefixErrors.apply(per_group, b_dec, x)
    loss.backward()
    grads = per_group.grad.clone(), b_dec.grad.clone()
    per_group.grad = b_dec.grad = None
    prefix_recons = per_group.cumsum(1) + b_dec
    plain = (prefix_recons - x[:, None]).pow(2).sum(2).mean()
    plain.backward()

    assert torch.allclose(loss, plain) and torch.allclose(recon, prefix_recons[:, -1].detach())
    assert torch.allclose(grads[0], per_group.grad) and torch.allclose(grads[1], b_dec.grad)
