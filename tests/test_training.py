"""Training: each arch recovers planted features, the per-step API, exact resume, file modes, bad input
fails cleanly."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from saelib.collection import store_from_tensor
from saelib.errors import BadArgument, BadFile, TrainingDiverged
from saelib.sae import ARCHS, SAE, SAEConfig, load_sae
from saelib.trainer import DEFAULT_LR, TrainConfig, Trainer
from saelib.training import train

D_IN, N_FEATURES = 24, 48


def planted_acts(
    n_tokens: int = 12_000, seed: int = 0, density: float | torch.Tensor = 0.06
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens = sparse non-negative mixes of unit feature directions, plus an offset, at a large scale."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(N_FEATURES, D_IN, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    on = torch.rand(n_tokens, N_FEATURES, generator=gen) < density
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
    "matryoshka": {"k": 4, "prefixes": [9, 36, 72]},
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
    with pytest.raises(BadFile, match="NaN/inf activations"):
        train(NaNAfter(store, bad_batch=14), tmp_path, **settings)
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]
    assert (ckpt / "state.safetensors").read_bytes() == before
    with pytest.raises(BadFile, match="different settings"):
        train(store, tmp_path, **{**settings, "epochs": 2})
    nan_store = store_from_tensor(torch.full((600, D_IN), float("nan")), tmp_path / "nan_store")
    with pytest.raises(BadFile, match="NaN/inf or all-zero"):
        train(nan_store, tmp_path / "other", **settings)


def test_resume_with_other_d_in_raises(planted, tmp_path):
    store, _ = planted
    train(store, tmp_path, expansion=2, batch_size=512, epochs=1, progress=False)
    other = store_from_tensor(torch.randn(2000, D_IN + 1), tmp_path / "other")
    with pytest.raises(BadFile, match="d_in=24 but this store has d_model=25"):
        train(other, tmp_path, expansion=2, batch_size=512, epochs=1, progress=False)


def test_bad_options_raise(planted, tmp_path):
    store, _ = planted
    with pytest.raises(BadArgument, match="k=100 must be between"):
        train(store, tmp_path, expansion=2, k=100, progress=False)
    with pytest.raises(BadArgument, match="Unknown training option"):
        train(store, tmp_path, learning_rate=1e-3)
    with pytest.raises(BadArgument, match="fewer than batch_size"):
        train(store, tmp_path, batch_size=10**6, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_train_config_is_json_in_saved_metadata(planted, tmp_path):
    store, _ = planted
    train(store, tmp_path, TrainConfig(expansion=2, batch_size=512, epochs=1, progress=False))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["saelib"]["train"]["batch_size"] == 512 and cfg["saelib"]["model"] == "synthetic"
    assert cfg["saelib"]["train"]["lr"] == DEFAULT_LR["topk"]  # the default's number, not None


def test_lr_none_means_the_archs_default_and_an_explicit_lr_wins(planted, tmp_path):
    store, _ = planted
    settings = dict(expansion=2, batch_size=512, n_tokens=512, progress=False)
    default = train(store, tmp_path / "a", arch="jumprelu", **settings)
    assert default.meta["train"]["lr"] == DEFAULT_LR["jumprelu"]
    assert train(store, tmp_path / "b", arch="jumprelu", lr=3e-4, **settings).meta["train"]["lr"] == 3e-4
    trainer = new_trainer("relu", normalised_batches(1), warmup_frac=0)
    step = trainer.step(normalised_batches(1)[0])  # the only step: no warm-up or decay
    assert step["lr"] == pytest.approx(DEFAULT_LR["relu"])


def normalised_batches(n_batches: int, batch_size: int = 256) -> list[torch.Tensor]:
    """Planted activations scaled to mean squared norm d_in, as `train` feeds `Trainer.step`."""
    acts, _ = planted_acts(n_batches * batch_size)
    acts = acts * (D_IN / acts.pow(2).sum(1).mean()).sqrt()
    return list(acts.split(batch_size))


def new_trainer(arch: str, batches: list[torch.Tensor], **settings) -> Trainer:
    """A Trainer on a fresh SAE with unit decoder rows, encoder = decoder transposed, b_dec at the mean."""
    sae = SAE(SAEConfig(D_IN, 2 * D_IN, arch=arch, k=4))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(F.normalize(torch.randn(2 * D_IN, D_IN, generator=gen), dim=1))
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_dec.copy_(torch.cat(batches).mean(0))
    return Trainer(sae, TrainConfig(arch=arch, k=4, **settings), total_steps=len(batches))


@pytest.mark.parametrize("arch", ARCHS)
def test_trainer_step_drives_training(arch):
    batches = normalised_batches(40)
    trainer = new_trainer(arch, batches, lr=2e-3, warmup_frac=0.1, l0_coeff=0.01, l1_coeff=0.1)
    first = trainer.step(batches[0])
    assert set(first) == {"loss", "mse", "fvu", "l0", "lr"}
    assert first["lr"] == pytest.approx(2e-3 / 4)  # first step of a 4-step warm-up
    steps = [first] + [trainer.step(batch) for batch in batches[1:]]
    assert trainer.steps_done == 40 and steps[-1]["lr"] == pytest.approx(2e-3 / 8)  # decays over 8 steps
    assert steps[-1]["fvu"] < 0.5 * first["fvu"]
    logged = trainer.log_stats()
    assert logged["fvu"] == pytest.approx(sum(s["fvu"] for s in steps) / 40)
    assert logged["lr"] == steps[-1]["lr"] and 0 <= logged["dead_frac"] <= 1
    if arch in ("topk", "batchtopk"):
        assert torch.allclose(trainer.sae.W_dec.norm(dim=1), torch.ones(2 * D_IN))
    if arch == "batchtopk":
        assert trainer.sae.threshold.min() > 0  # learnt from the smallest kept activations
    assert trainer.log_stats().keys() == {"dead_frac", "lr"}  # nothing logged since the last call


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu"])
def test_trainer_restored_from_state_dict_continues_exactly(arch):
    batches = normalised_batches(12)
    settings = dict(dead_tokens=512)  # some latents die, so AuxK and its counters take part
    trainer = new_trainer(arch, batches, **settings)
    for batch in batches[:6]:
        trainer.step(batch)
    restored = new_trainer(arch, batches, **settings)
    restored.load_state_dict(trainer.state_dict())
    assert restored.steps_done == 6
    for batch in batches[6:]:
        assert trainer.step(batch) == restored.step(batch)
    for name, tensor in trainer.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name]), name


def test_saved_sae_and_checkpoints_get_the_umask_mode(planted, tmp_path):
    """A second user of a shared run folder can read it: no private temp-file modes."""
    store, _ = planted
    old = os.umask(0o022)
    try:
        train(store, tmp_path, expansion=2, batch_size=512, epochs=1, progress=False)
    finally:
        os.umask(old)
    written = [tmp_path / "sae", *(tmp_path / "sae").iterdir(), *(tmp_path / "checkpoints").rglob("*")]
    modes = {path.relative_to(tmp_path).as_posix(): oct(path.stat().st_mode & 0o777) for path in written}
    assert len(modes) == 6, modes  # sae/ with 2 files, one checkpoint folder with 2 files
    assert modes == {name: oct(0o755 if (tmp_path / name).is_dir() else 0o644) for name in modes}


def test_corrupt_checkpoint_is_named(planted, tmp_path):
    store, _ = planted
    train(store, tmp_path, expansion=2, batch_size=512, epochs=1, progress=False)
    (state,) = (tmp_path / "checkpoints").glob("step-*/state.safetensors")
    state.write_bytes(state.read_bytes()[:50])
    with pytest.raises(BadFile, match="checkpoint .* is corrupt"):
        train(store, tmp_path, expansion=2, batch_size=512, epochs=1, progress=False)


def test_divergence_raises_and_names_the_fix(planted, tmp_path):
    store, _ = planted
    settings = dict(arch="relu", lr=1e30, warmup_frac=0, expansion=2, batch_size=512, progress=False)
    with pytest.raises(TrainingDiverged, match=r"Training diverged at step \d+ .*lower lr"):
        train(store, tmp_path, **settings)


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_sparsity_penalty_is_steered_to_the_target_l0(arch, tmp_path):
    """One asks for an L0 (half the ~12 planted features on per token); the coefficient that gives it is
    found while training, from far too weak."""
    store = store_from_tensor(planted_acts(8192, density=0.25)[0], tmp_path / "activations")
    stats = []
    start = {"jumprelu": {"l0_coeff": 1e-2}, "relu": {"l1_coeff": 0.3}}[arch]
    train(
        store,
        tmp_path / "run",
        arch=arch,
        expansion=3,
        batch_size=256,
        epochs=25,
        lr=3e-3,
        target_l0=6,
        progress=False,
        callback=lambda step, s: stats.append(s),
        **start,
    )
    final_l0 = sum(s["l0"] for s in stats[-5:]) / 5
    assert 4.5 <= final_l0 <= 7.5, final_l0
    assert stats[-1]["dead_frac"] <= 0.1


def prefix_fvus(sae, acts: torch.Tensor) -> list[float]:
    """FVU of the reconstruction from each prefix of the latents alone."""
    latents = sae.encode(acts)
    total_var = (acts - acts.mean(0)).pow(2).sum()
    fvus = []
    for end in sae.cfg.prefixes:
        recon = latents[:, :end] @ sae.W_dec[:end] + sae.b_dec
        fvus.append(((recon - acts).pow(2).sum() / total_var).item())
    return fvus


def test_matryoshka_prefixes_each_reconstruct(tmp_path):
    """Features of Zipf-like frequencies: the first 12 latents alone should hold the most frequent ones."""
    acts, _ = planted_acts(density=0.4 / torch.arange(1, N_FEATURES + 1))
    store = store_from_tensor(acts, tmp_path / "activations")
    settings = dict(expansion=3, batch_size=256, epochs=4, k=4, progress=False)
    sae = train(store, tmp_path / "m", arch="matryoshka", prefixes=[12, 36, 72], **settings)
    flat = SAE(SAEConfig(D_IN, 72, arch="matryoshka", k=4, prefixes=(12, 36, 72)))
    flat.load_state_dict(train(store, tmp_path / "b", arch="batchtopk", **settings).state_dict())
    acts = next(store.iter_batches(2048, shuffle=False))
    nested, unnested = prefix_fvus(sae, acts), prefix_fvus(flat, acts)
    assert max(nested) < 0.5
    # the first 12 and 36 latents alone reconstruct more; all 72 about as well as BatchTopK
    assert nested[0] < unnested[0] - 0.03 and nested[1] < unnested[1] - 0.03
    assert nested[2] < 1.1 * unnested[2]
    loaded = load_sae(tmp_path / "m")
    assert loaded.cfg.prefixes == (12, 36, 72) and torch.equal(loaded(acts), sae(acts))
