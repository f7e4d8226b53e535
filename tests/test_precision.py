"""Precision: what "auto" resolves to, and every stage (LM, collection, training, evaluation) in both
float32 and bfloat16 on tiny models, bf16 results close to float32 ones."""

import json

import pytest
import torch
from conftest import make_tiny_lm
from test_training import planted_acts

from saelib import precision
from saelib.collection import collect, store_from_tensor
from saelib.errors import BadArgument
from saelib.lm import LM, load_lm
from saelib.metrics import evaluate
from saelib.sae import SAE, SAEConfig
from saelib.trainer import TrainConfig, Trainer
from saelib.training import train

TEXTS = ["Dogs are man's best friend.", "London is a major city with many parks and old streets."] * 12


def test_explicit_precisions_pass_through_and_bad_ones_name_the_choices():
    assert precision.resolve_precision("float32") == "float32"
    assert precision.resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(BadArgument, match="auto"):
        precision.resolve_precision("float16")


@pytest.mark.parametrize(
    "flags, native", [({"avx2"}, False), ({"avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True)]
)
def test_auto_follows_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision, "native_bf16", precision.native_bf16.__wrapped__)
    assert precision.resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")


def test_train_config_resolves_auto_once():
    assert TrainConfig().precision in ("float32", "bfloat16")
    assert TrainConfig().precision == precision.resolve_precision("auto")
    with pytest.raises(BadArgument, match="precision"):
        TrainConfig(precision="fp8")


@pytest.fixture(scope="module")
def saved_tiny_lm(tmp_path_factory):
    lm = make_tiny_lm("llama")
    path = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


def test_load_lm_in_both_precisions_gives_float32_activations_that_agree(saved_tiny_lm):
    lm32 = load_lm(saved_tiny_lm, device="cpu", precision="float32")
    lm16 = load_lm(saved_tiny_lm, device="cpu", precision="bfloat16")
    assert (lm32.precision, lm16.precision) == ("float32", "bfloat16")
    assert "bfloat16" in repr(lm16) and next(lm16.model.parameters()).dtype == torch.bfloat16
    acts32 = torch.cat(lm32.activations(TEXTS[:2], layer=2).acts)
    acts16 = torch.cat(lm16.activations(TEXTS[:2], layer=2).acts)
    assert acts16.dtype == torch.float32
    relative = (acts16 - acts32).norm(dim=1) / acts32.norm(dim=1)
    assert relative.median() < 0.03


def test_collect_records_the_lm_precision(tmp_path):
    lm = make_tiny_lm("llama")
    lm16 = LM.from_model(make_tiny_lm("llama").model.to(torch.bfloat16), lm.tokenizer, name="tiny-llama")
    stores = {
        name: collect(model, TEXTS, tmp_path / name, layer=2, dtype="float32", progress=False)
        for name, model in (("float32", lm), ("bfloat16", lm16))
    }
    for name, store in stores.items():
        assert json.loads((store.path / "manifest.json").read_text())["precision"] == name
    acts32, acts16 = (torch.cat([s.acts for s in store.shards()]) for store in stores.values())
    assert ((acts16 - acts32).norm(dim=1) / acts32.norm(dim=1)).median() < 0.03


def test_evaluate_records_the_lm_precision_and_ce_agrees(tmp_path, text_sae):
    lm = make_tiny_lm("llama")
    lm16 = LM.from_model(make_tiny_lm("llama").model.to(torch.bfloat16), lm.tokenizer, name="tiny-llama")
    store = collect(lm, TEXTS, tmp_path / "acts", layer=1, dtype="float32", progress=False)
    results = {
        m.precision: evaluate(text_sae, store, m, texts=TEXTS[:4], progress=False, probing=False)
        for m in (lm, lm16)
    }
    assert {r["lm_precision"] for r in results.values()} == {"float32", "bfloat16"}
    for key in ("ce_clean", "ce_sae", "ce_zero"):
        assert results["bfloat16"][key] == pytest.approx(results["float32"][key], rel=0.02)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_bf16_step_keeps_float32_weights_grads_and_adam_state(arch):
    torch.manual_seed(0)
    x = torch.randn(64, 16) * 3
    losses = {}
    for name in ("float32", "bfloat16"):
        cfg = TrainConfig(arch=arch, k=4, expansion=4, precision=name, warmup_frac=0, l0_coeff=0.0)
        sae = SAE(SAEConfig(16, 64, arch=arch, k=4))
        with torch.no_grad():
            for param in (sae.W_enc, sae.W_dec):
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.2)
        trainer = Trainer(sae, cfg, total_steps=10)
        losses[name] = trainer.step(x)["loss"]
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in sae.parameters())
        state = trainer.optimizer.state_dict()["state"]
        assert all(t.dtype == torch.float32 for entry in state.values() for t in entry.values() if t.ndim)
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_training_in_bf16_matches_float32_quality(tmp_path, arch):
    acts, _ = planted_acts(6_000)
    store = store_from_tensor(acts, tmp_path / "acts")
    settings = dict(arch=arch, k=4, expansion=3, batch_size=256, epochs=3, progress=False, l1_coeff=1.0)
    fvu = {}
    for name in ("float32", "bfloat16"):
        sae = train(store, tmp_path / name, precision=name, **settings)
        assert sae.meta["train"]["precision"] == name
        fvu[name] = evaluate(sae, store, progress=False)["fvu"]
    assert fvu["bfloat16"] == pytest.approx(fvu["float32"], rel=0.1, abs=0.01)


def test_freed_memory_stays_with_the_process_on_glibc():
    """Training and LM loading tune glibc's malloc once; elsewhere it reports that nothing changed."""
    import platform

    from saelib.malloc import keep_freed_memory

    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")
