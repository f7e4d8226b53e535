"""Training: each arch recovers planted features, resume is exact, bad input fails cleanly."""

import json

import pytest
import torch

from saelib.sae import load_sae
from saelib.store import store_from_tensor
from saelib.train import TrainConfig, train

D_IN, N_FEATURES = 24, 48


def planted_acts(n_tokens: int = 12_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens = sparse non-negative mixes of unit feature directions, plus an offset, at a large scale."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(N_FEATURES, D_IN, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    on = torch.rand(n_tokens, N_FEATURES, generator=gen) < 0.06
    magnitude = torch.rand(n_tokens, N_FEATURES, generator=gen) * 2 + 0.5
    acts = (on * magnitude) @ features + 0.5 * torch.randn(D_IN, generator=gen)
    return acts * 20, features


def recovery(sae, features) -> float:
    """Mean over true features of the best cosine similarity with a decoder row."""
    rows = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    return (features @ rows.T).max(dim=1).values.mean().item()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    acts, features = planted_acts()
    return store_from_tensor(acts, tmp_path_factory.mktemp("planted") / "activations"), features


ARCH_SETTINGS = {
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "relu": {"l1_coeff": 1.0},
    "jumprelu": {"l0_coeff": 0.1, "k": 4},
}


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_each_arch_recovers_planted_features(arch, planted, tmp_path):
    store, features = planted
    stats = []
    sae = train(
        store,
        tmp_path,
        arch=arch,
        expansion=3,
        batch_size=256,
        epochs=6,
        progress=False,
        callback=lambda step, s: stats.append(s),
        **ARCH_SETTINGS[arch],
    )
    assert recovery(sae, features) >= 0.9
    assert stats[-1]["fvu"] < 0.35 and set(stats[-1]) >= {"loss", "mse", "fvu", "l0", "dead_frac", "lr"}
    loaded = load_sae(tmp_path / "sae")
    raw = next(store.iter_batches(64, shuffle=False))
    assert torch.equal(loaded(raw), sae(raw))
    assert loaded.meta["norm_scale"] == pytest.approx((D_IN / store.mean_sq_norm) ** 0.5)


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_resume_equals_uninterrupted(arch, planted, tmp_path):
    store, _ = planted
    settings = dict(
        arch=arch,
        expansion=2,
        batch_size=512,
        epochs=2,
        checkpoint_every=7,
        log_every=1,
        dead_tokens=3000,
        progress=False,
    )
    full_log = []
    full = train(
        store,
        tmp_path / "full",
        callback=lambda step, stats: full_log.append((step, stats["fvu"])),
        **settings,
    )

    def interrupt(step, _stats):
        if step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(store, tmp_path / "resumed", callback=interrupt, **settings)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-0000014"]
    resumed_log = []
    resumed = train(
        store,
        tmp_path / "resumed",
        callback=lambda step, stats: resumed_log.append((step, stats["fvu"])),
        **settings,
    )
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert resumed_log == full_log  # the curves of a resumed run start at step 1, as if never interrupted


class NaNAfter:
    """A store whose training batches turn NaN from the `bad_batch`-th batch of an epoch on."""

    def __init__(self, store, bad_batch: int):
        self.store, self.bad_batch = store, bad_batch

    def __getattr__(self, name):
        return getattr(self.store, name)

    def iter_batches(self, batch_size, shuffle=True, seed=0, split="train", skip_batches=0):
        batches = self.store.iter_batches(batch_size, shuffle, seed, split, skip_batches)
        for i, batch in enumerate(batches, start=skip_batches):
            if i >= self.bad_batch and split == "train" and shuffle:
                batch = batch.clone()
                batch[3, 1] = float("nan")
            yield batch


def test_nan_batch_raises_and_keeps_checkpoint(planted, tmp_path):
    store, _ = planted
    settings = dict(expansion=2, batch_size=512, epochs=1, checkpoint_every=5, progress=False)

    def interrupt(step, _stats):
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(store, tmp_path, callback=interrupt, log_every=1, **settings)
    ckpt = tmp_path / "checkpoints" / "step-0000010"
    before = (ckpt / "state.safetensors").read_bytes()
    with pytest.raises(ValueError, match="NaN/inf activations"):
        train(NaNAfter(store, bad_batch=14), tmp_path, **settings)
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]
    assert (ckpt / "state.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="different settings"):
        train(store, tmp_path, **{**settings, "epochs": 2})
    nan_store = store_from_tensor(torch.full((600, D_IN), float("nan")), tmp_path / "nan_store")
    with pytest.raises(ValueError, match="NaN/inf or all-zero"):
        train(nan_store, tmp_path / "other", **settings)


def test_resume_with_other_d_in_raises(planted, tmp_path):
    store, _ = planted
    train(store, tmp_path, expansion=2, batch_size=512, epochs=1, progress=False)
    other = store_from_tensor(torch.randn(2000, D_IN + 1), tmp_path / "other")
    with pytest.raises(ValueError, match="d_in=24 but this store has d_model=25"):
        train(other, tmp_path, expansion=2, batch_size=512, epochs=1, progress=False)


def test_bad_options_raise(planted, tmp_path):
    store, _ = planted
    with pytest.raises(ValueError, match="k=100 must be between"):
        train(store, tmp_path, expansion=2, k=100, progress=False)
    with pytest.raises(ValueError, match="Unknown training option"):
        train(store, tmp_path, learning_rate=1e-3)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(store, tmp_path, batch_size=10**6, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_train_config_is_json_in_saved_metadata(planted, tmp_path):
    store, _ = planted
    train(store, tmp_path, TrainConfig(expansion=2, batch_size=512, epochs=1, progress=False))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["saelib"]["train"]["batch_size"] == 512 and cfg["saelib"]["model"] == "synthetic"
