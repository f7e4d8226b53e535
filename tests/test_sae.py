"""SAE module: sparse autograd against dense autograd, save/load, folding the input scale."""

import json

import pytest
import torch
import torch.nn.functional as F

from saelib.sae import ARCHS, SAE, SAEConfig, SparseDecode, SparseEncode, load_sae, row_offsets
from saelib.train import batch_top_indices


def random_sae(arch: str, d_in: int = 12, d_sae: int = 40, k: int = 5, seed: int = 0) -> SAE:
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in, d_sae, arch=arch, k=k), meta={"model": "tiny", "layer": 2, "site": "resid"})
    with torch.no_grad():
        for param in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        if arch in ("jumprelu", "batchtopk"):
            sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.3)
    return sae


@pytest.mark.parametrize("batch_top", [False, True])
def test_sparse_autograd_matches_dense_reference(batch_top):
    torch.manual_seed(0)
    n, d_in, d_sae, k = 24, 10, 30, 4
    x = torch.randn(n, d_in, dtype=torch.float64)
    target = torch.randn(n, d_in, dtype=torch.float64)
    W_enc = torch.randn(d_in, d_sae, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(d_sae, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(d_sae, d_in, dtype=torch.float64, requires_grad=True)

    def select(pre):
        if batch_top:  # uneven counts per row, some rows possibly empty
            flat = pre.flatten().topk(n * k).indices.sort().values
            return flat // d_sae, flat % d_sae
        return torch.arange(n).repeat_interleave(k), pre.topk(k, dim=1).indices.flatten()

    values, rows, cols = SparseEncode.apply(x, W_enc, bias, select)
    recon = SparseDecode.apply(F.relu(values), W_dec, rows, cols, row_offsets(rows, n))
    (recon - target).pow(2).sum().backward()
    sparse_grads = [p.grad.clone() for p in (W_enc, bias, W_dec)]
    for p in (W_enc, bias, W_dec):
        p.grad = None

    pre = x @ W_enc + bias
    mask = torch.zeros_like(pre)
    mask[rows, cols] = 1
    dense_recon = (F.relu(pre) * mask) @ W_dec
    (dense_recon - target).pow(2).sum().backward()
    assert torch.allclose(recon, dense_recon, atol=1e-10)
    for sparse, p in zip(sparse_grads, (W_enc, bias, W_dec)):
        assert torch.allclose(sparse, p.grad, atol=1e-9)


def test_batch_top_indices_is_exact():
    values = torch.randn(50_000, generator=torch.Generator().manual_seed(1))
    for n in (1, 37, 4000):
        assert torch.equal(batch_top_indices(values, n).sort().values, values.topk(n).indices.sort().values)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, tmp_path):
    sae = random_sae(arch)
    sae.save(tmp_path / "sae", metadata={"norm_scale": 1.0})
    loaded = load_sae(tmp_path / "sae")
    x = torch.randn(16, 12)
    assert loaded.cfg == sae.cfg and loaded.meta["layer"] == 2
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded(x), sae(x))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk"}.get(arch, "jumprelu")
    assert cfg["hook_name"] == "blocks.2.hook_resid_post" and cfg["normalize_activations"] == "none"
    assert cfg["d_in"] == 12 and cfg["d_sae"] == 40 and cfg["apply_b_dec_to_input"] is True
    if arch == "topk":
        assert cfg["activation_fn_kwargs"] == {"k": 5}


@pytest.mark.parametrize("arch", ARCHS)
def test_folded_sae_reads_raw_activations(arch, tmp_path):
    sae = random_sae(arch)
    scale = 0.37
    raw = torch.randn(32, 12) * 3 + 1
    sae.folded(scale).save(tmp_path)
    loaded = load_sae(tmp_path)
    assert loaded.meta["norm_scale"] == pytest.approx(scale)
    assert torch.allclose(loaded.encode(raw), sae.encode(raw * scale), atol=1e-5)
    assert torch.allclose(loaded(raw), sae(raw * scale) / scale, atol=1e-4)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="k=50 must be between 1 and d_sae=40"):
        SAEConfig(12, 40, arch="topk", k=50)
    with pytest.raises(ValueError, match="Unknown arch"):
        SAEConfig(12, 40, arch="gated")


def test_load_sae_missing_files(tmp_path):
    with pytest.raises(ValueError, match="No SAE at"):
        load_sae(tmp_path)


def test_load_sae_corrupt_files_are_named(tmp_path):
    random_sae("topk").save(tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or does not match"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{truncated")
    with pytest.raises(ValueError, match="cfg.json is corrupt"):
        load_sae(tmp_path)


def test_hook_name_is_a_string_without_a_layer(tmp_path):
    """SAE Lens's loader fails on a null hook_name."""
    sae = random_sae("relu")
    sae.meta.pop("layer", None)
    sae.save(tmp_path)
    assert isinstance(json.loads((tmp_path / "cfg.json").read_text())["hook_name"], str)
