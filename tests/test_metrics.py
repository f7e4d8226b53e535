"""Metrics: reconstruction sanity on synthetic stores, downstream CE on the tiny LM, bad input."""

import json

import pytest
import torch
from conftest import identity_sae

from saelib.collection import collect, store_from_tensor
from saelib.errors import BadArgument
from saelib.metrics import downstream_metrics, evaluate, log10_density, shared_downstream_metrics
from saelib.sae import SAE, SAEConfig


def test_reconstruction_metrics_of_identity_and_zero(tmp_path):
    acts = torch.randn(3000, 16) * 4 + 2
    store = store_from_tensor(acts, tmp_path / "acts")
    metrics = evaluate(identity_sae(16, signed=True), store, run_dir=tmp_path, progress=False)
    assert metrics["fvu"] < 1e-10 and metrics["mse"] < 1e-10
    assert 15 < metrics["l0"] < 17  # half the latents fire on each token
    assert metrics["dead_frac"] == 0 and metrics["dense_frac"] == 1.0
    assert len(metrics["feature_density"]) == 32
    assert json.loads((tmp_path / "metrics.json").read_text())["fvu"] == metrics["fvu"]

    eval_acts = torch.cat(list(store.iter_batches(4096, shuffle=False, split="eval")))
    mean_sae = SAE(SAEConfig(16, 32, arch="relu"))
    with torch.no_grad():
        mean_sae.b_dec.copy_(eval_acts.mean(0))
    metrics = evaluate(mean_sae, store, progress=False)
    assert metrics["fvu"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["l0"] == 0 and metrics["dead_frac"] == 1.0


def test_density_counts_every_stored_token_errors_only_eval(tmp_path):
    """A latent that fires only on training documents is rare, not dead; FVU stays held-out."""
    acts = torch.zeros(64 * 40, 2)
    acts[:, 1] = torch.randn(len(acts))
    acts[64 * 3, 0] = 5.0  # row of document 3 (train split): latent 0 fires once
    store = store_from_tensor(acts, tmp_path)
    sae = identity_sae(2, signed=True)
    metrics = evaluate(sae, store, progress=False)
    assert metrics["n_density_tokens"] == len(acts) and metrics["n_eval_tokens"] == 2 * 64  # docs 19 and 39
    assert metrics["feature_density"][0] == pytest.approx(1 / len(acts))
    assert metrics["dead_frac"] == pytest.approx(1 / 4)  # latent 2 (-x of column 0) never fires


def test_downstream_ce_recovered_on_tiny_lm(tiny_llama, tmp_path):
    texts = [f"Sentence {i}: dogs run fast and cats sleep in the warm sun today." for i in range(40)]
    store = collect(tiny_llama, texts, tmp_path / "acts", layer=1, dtype="float32", progress=False)
    metrics = evaluate(identity_sae(tiny_llama.d_model, signed=True), store, lm=tiny_llama, progress=False)
    assert metrics["ce_sae"] == pytest.approx(metrics["ce_clean"], abs=1e-4)
    assert metrics["kl_sae"] == pytest.approx(0, abs=1e-4)
    assert metrics["ce_zero"] != pytest.approx(metrics["ce_clean"], abs=1e-3)
    if metrics["ce_zero"] > metrics["ce_clean"]:
        assert metrics["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-2)

    broken = SAE(SAEConfig(tiny_llama.d_model, 8, arch="relu"))  # reconstructs only b_dec = 0
    zeroed = evaluate(broken, store, lm=tiny_llama, texts=texts[:8], progress=False)
    assert zeroed["ce_sae"] == pytest.approx(zeroed["ce_zero"], abs=1e-4)
    assert zeroed["kl_sae"] > 0


def test_shared_downstream_pass_matches_one_sae_at_a_time(tiny_llama):
    """The frontier evaluates its SAEs in one pass over the texts: each result equals its own pass."""
    texts = [f"Text {i}: the river bends past the old mill and the town." for i in range(12)]
    gen = torch.Generator().manual_seed(0)
    saes = [identity_sae(tiny_llama.d_model, signed=True), SAE(SAEConfig(tiny_llama.d_model, 8, arch="relu"))]
    with torch.no_grad():
        saes[1].W_enc.copy_(torch.randn(tiny_llama.d_model, 8, generator=gen))
        saes[1].W_dec.copy_(torch.randn(8, tiny_llama.d_model, generator=gen))
    shared = shared_downstream_metrics(saes, tiny_llama, texts, layer=1, site="resid", progress=False)
    for sae, together in zip(saes, shared):
        alone = downstream_metrics(sae, tiny_llama, texts, layer=1, site="resid", progress=False)
        assert together == pytest.approx(alone, rel=1e-6, abs=1e-9)
    assert shared[0]["kl_sae"] == pytest.approx(0, abs=1e-4) and shared[1]["kl_sae"] > 1e-3


def test_log10_density_counts_the_latents_that_never_fired():
    assert log10_density({"feature_density": [0.1, 0.0, 0.001, 0.0]}) == ([-1.0, -3.0], 2)


def test_mismatched_or_too_small_inputs_name_the_fix(tmp_path, tiny_llama):
    store = store_from_tensor(torch.randn(640, 8), tmp_path / "small")  # 10 documents: no eval split
    with pytest.raises(BadArgument, match="no eval tokens.*at least 20 documents"):
        evaluate(identity_sae(8, signed=True), store, progress=False)
    with pytest.raises(BadArgument, match="d_in=6 but the store holds d_model=8"):
        evaluate(identity_sae(6, signed=True), store, progress=False)
    with pytest.raises(BadArgument, match="at least one held-out text"):
        evaluate(
            identity_sae(8, signed=True),
            store_from_tensor(torch.randn(2000, 8), tmp_path / "big"),
            lm=tiny_llama,
            texts=[],
            progress=False,
        )
