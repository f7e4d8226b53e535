"""The tiny pipeline with the device passed explicitly at every step: collect, train, load, evaluate,
analyse, dashboard, explorer. Runs on the CPU everywhere and on CUDA when torch sees a GPU (skipped
otherwise), so a device mismatch anywhere on the line fails here."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import make_tiny_lm

from saelib import analysis
from saelib.collection import collect
from saelib.lm import LM
from saelib.metrics import evaluate
from saelib.report import write_dashboard
from saelib.sae import load_sae
from saelib.training import train

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")),
]
TEXTS = [
    f"{a} {b} {c}." for a, b, c in itertools.product(["Dogs", "Cats", "Cities"], ["run", "grow"], "abcd")
] * 4


@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_on_device(tmp_path, device):
    tiny = make_tiny_lm("llama")
    lm = LM.from_model(tiny.model.to(device), tiny.tokenizer, name="tiny-llama")
    assert lm.device.type == device
    store = collect(lm, TEXTS, tmp_path / "activations", layer=1, batch_size=8, progress=False)
    trained = train(
        store,
        tmp_path,
        arch="batchtopk",
        k=4,
        expansion=2,
        batch_size=64,
        epochs=3,
        device=device,
        progress=False,
        checkpoint_every=5,
    )
    assert trained.W_dec.device.type == device
    sae = load_sae(tmp_path, device=device)
    assert sae.W_dec.device.type == device
    metrics = evaluate(sae, store, lm, texts=TEXTS[:8], run_dir=tmp_path, progress=False)
    assert metrics["fvu"] < 1 and metrics["ce_sae"] > 0
    acts = analysis.encode_texts(lm, sae, TEXTS[:3])
    assert acts.text_max.device.type == "cpu"  # analysis hands back CPU tensors whatever the devices
    stats = analysis.feature_stats(sae, store, n_top=3, progress=False)
    page = write_dashboard(tmp_path, lm, sae, store, [int(stats.max_act.argmax())], stats=stats, n_contexts=2)
    assert "logit lens" in page.read_text()
    from saelib.widgets import Explorer

    assert Explorer(lm, sae, TEXTS[:2]).acts.text_max.shape[1] == sae.cfg.d_sae
