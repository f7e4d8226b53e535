"""SAE module: save/load in SAE Lens's layout, folding the input scale, errors that name the fix."""

import json

import pytest
import torch
from conftest import random_sae

from saelib.errors import BadArgument, BadFile
from saelib.sae import ARCHS, THRESHOLD_ARCHS, SAEConfig, load_sae


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


def test_load_sae_from_its_run_folder(tmp_path):
    sae = random_sae("topk")
    sae.save(tmp_path / "sae")
    assert load_sae(tmp_path).cfg == sae.cfg


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
    with pytest.raises(BadArgument, match="k=50 must be between 1 and d_sae=40"):
        SAEConfig(12, 40, arch="topk", k=50)
    with pytest.raises(BadArgument, match="Unknown arch"):
        SAEConfig(12, 40, arch="gated")


def test_width_mismatch_names_the_sae_and_where_it_was_trained():
    sae = random_sae("topk", layer=15)
    sae.meta["model"] = "SmolLM2-135M"
    with pytest.raises(
        BadArgument, match=r"reads d_in=12 activations \(SmolLM2-135M layer 15 resid\).*\(4, 10\)"
    ):
        sae.encode(torch.randn(4, 10))
    with pytest.raises(
        BadArgument, match=r"decodes d_sae=40 latents \(SmolLM2-135M layer 15 resid\).*\(3, 12\)"
    ):
        sae.decode(torch.randn(3, 12))
    with pytest.raises(BadArgument, match="reads d_in=12"):
        sae(torch.tensor(1.0))
    sae.meta.clear()
    with pytest.raises(BadArgument, match="where it was trained is not recorded"):
        sae.encode(torch.randn(10))
    assert sae.encode(torch.randn(2, 3, 12)).shape == (2, 3, 40)  # any leading shape


def test_load_sae_missing_folder_or_files(tmp_path):
    with pytest.raises(BadFile, match="No SAE at"):
        load_sae(tmp_path / "nowhere")
    random_sae("topk").save(tmp_path)
    (tmp_path / "sae_weights.safetensors").unlink()
    with pytest.raises(BadFile, match="No SAE at .*layouts saelib reads: saelib .*SAE Lens.*sparsify"):
        load_sae(tmp_path)


def test_load_sae_corrupt_files_are_named(tmp_path):
    random_sae("topk").save(tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BadFile, match="sae_weights.safetensors is corrupt"):
        load_sae(tmp_path)
    random_sae("topk", d_sae=41).save(tmp_path / "other")
    weights.write_bytes((tmp_path / "other" / "sae_weights.safetensors").read_bytes())
    with pytest.raises(BadFile, match="does not match its config"):
        load_sae(tmp_path)


@pytest.mark.parametrize(
    "text", ["{truncated", "", "[1, 2]", '{"d_in": 12, "saelib": {"arch": "topk", "k": 5}}', "\udcff"]
)
def test_corrupt_cfg_json_is_reported_as_corrupt(text, tmp_path):
    random_sae("topk").save(tmp_path)
    (tmp_path / "cfg.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(BadFile, match="cfg.json is corrupt"):
        load_sae(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_without_its_saelib_block_the_folder_reads_as_sae_lens_with_the_same_outputs(arch, tmp_path):
    sae = random_sae(arch)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["saelib"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = load_sae(tmp_path)
    assert loaded.meta["format"] == "SAE Lens 5.x" and (loaded.meta["layer"], loaded.meta["site"]) == (
        2,
        "resid",
    )
    x = torch.randn(16, 12)
    assert torch.equal(loaded(x), sae(x))


def test_hook_name_is_a_string_without_a_layer(tmp_path):
    """SAE Lens's loader fails on a null hook_name."""
    sae = random_sae("relu")
    sae.meta.pop("layer", None)
    sae.save(tmp_path)
    assert isinstance(json.loads((tmp_path / "cfg.json").read_text())["hook_name"], str)


@pytest.mark.parametrize(
    "site,hook", [("resid_pre", "blocks.2.hook_resid_pre"), ("mlp_out", "blocks.2.hook_mlp_out")]
)
def test_saved_hook_name_matches_the_site(site, hook, tmp_path):
    random_sae("relu", site=site).save(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["hook_name"] == hook
    assert load_sae(tmp_path).meta["site"] == site


def test_the_bundled_model_is_saved_under_its_hub_id_with_a_note(tmp_path):
    sae = random_sae("topk")
    sae.meta["model"] = "default"
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1" in cfg["saelib"]["model_note"]
    assert load_sae(tmp_path).meta["model"] == "default"  # saelib reloads the bundled weights


@pytest.mark.parametrize("arch", ARCHS)
def test_activate_and_firing_counts_agree_with_encode(arch):
    """activate(pre_acts(x)) is encode(x), and firing_counts(pre) counts its nonzero latents per column,
    also with tied, negative and zero pre-activations and a negative threshold."""
    sae = random_sae(arch)
    x = torch.randn(64, 12)
    x[10:20] = x[0]  # repeated rows: tied pre-activations
    if arch in THRESHOLD_ARCHS:
        sae.threshold[:5] = -0.5  # a negative threshold still needs a positive pre-activation
        sae.threshold[5:10] = 0.0
    pre = sae.pre_acts(x)
    latents = sae.encode(x)
    assert torch.equal(sae.activate(pre), latents)
    assert torch.equal(sae.firing_counts(pre).long(), (latents > 0).sum(0))
    reference = torch.relu(pre) * (pre > sae.threshold) if arch in THRESHOLD_ARCHS else None
    if reference is not None:
        assert torch.equal(latents, reference)
