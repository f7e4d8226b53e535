"""Reading other libraries' SAE folders: saelib's encode/decode against outputs the libraries computed
themselves (tests/fixtures, written by scripts/make_fixtures.py), layouts, hub ids and refusals."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

from saelib.errors import BadArgument, BadFile
from saelib.hooks import parse_hook
from saelib.sae import load_sae

FIXTURES = ROOT / "tests" / "fixtures"
CASES = sorted(path.parent.relative_to(FIXTURES) for path in FIXTURES.rglob("reference.safetensors"))
DL_SITES = {"resid_post": "resid", "mlp_out": "mlp_out", "attn_out": "attn_out"}


def test_every_library_has_fixtures():
    assert {case.parts[0] for case in CASES} == {"sae_lens", "sparsify", "dictionary_learning"}
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES, ids=str)
def test_encode_and_decode_match_the_library(case):
    folder = FIXTURES / case
    ref = load_file(str(folder / "reference.safetensors"))
    sae = load_sae(folder)
    latents = sae.encode(ref["x"])
    assert (latents - ref["latents"]).abs().max() <= 1e-5
    assert (sae.decode(ref["latents"], ref["x"]) - ref["recon"]).abs().max() <= 1e-5
    assert (sae(ref["x"]) - ref["recon"]).abs().max() <= 1e-5
    assert torch.equal(latents > 0, ref["latents"] > 0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_metadata_names_model_layer_and_site(case):
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    meta = load_sae(FIXTURES / case).meta
    assert meta["model"] == expected["model"]
    if "hook_name" in expected:
        assert meta["hook_name"] == expected["hook_name"]
        assert (meta["layer"], meta["site"]) == parse_hook(expected["hook_name"])
    else:
        assert (meta["layer"], meta["site"]) == (expected["layer"], DL_SITES[expected["submodule"]])
    assert meta["format"].split()[0] in ("SAE", "sparsify", "dictionary_learning")


def test_a_folder_of_hookpoints_lists_them():
    with pytest.raises(BadFile, match=r"one SAE per hook point: layers\.1, layers\.2\.mlp; pass one"):
        load_sae(FIXTURES / "sparsify" / "run")


def test_an_unknown_layout_lists_the_supported_ones(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"not an SAE")
    with pytest.raises(BadFile, match="SAE Lens.*sparsify.*dictionary_learning.*hf:"):
        load_sae(tmp_path)


def copy_of(case: str, tmp_path: Path) -> Path:
    folder = tmp_path / "sae"
    shutil.copytree(FIXTURES / case, folder)
    return folder


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "case,file,changes,match",
    [
        ("sae_lens/standard", "cfg.json", {"reshape_activations": "hook_z"}, "reshape_activations"),
        ("sae_lens/standard", "cfg.json", {"architecture": "gated"}, "architecture 'gated'"),
        ("sparsify/run/layers.1", "cfg.json", {"transcode": True}, "transcoder"),
        ("sparsify/run/layers.1", "cfg.json", {"activation": "groupmax"}, "groupmax"),
        (
            "dictionary_learning/standard",
            "config.json",
            {"trainer": {"dict_class": "GatedAutoEncoder"}},
            "Gated",
        ),
    ],
)
def test_settings_saelib_cannot_reproduce_are_refused(case, file, changes, match, tmp_path):
    folder = copy_of(case, tmp_path)
    edit_json(folder / file, **changes)
    with pytest.raises(BadFile, match=match):
        load_sae(folder)


class WritesAFile:
    """Unpickling this would create `marker`: what torch.load without weights_only would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_dictionary_learning_weights_never_run_pickled_code(tmp_path):
    folder = copy_of("dictionary_learning/standard", tmp_path)
    marker = tmp_path / "ran"
    torch.save({"encoder.weight": WritesAFile(marker)}, folder / "ae.pt")
    with pytest.raises(BadFile, match="not a plain state dict"):
        load_sae(folder)
    assert not marker.exists()


def test_an_input_norm_survives_saving_and_needs_x_to_decode(tmp_path):
    sae = load_sae(FIXTURES / "sae_lens" / "standard_layer_norm")
    assert sae.cfg.input_norm == "layer_norm"
    sae.save(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["normalize_activations"] == "layer_norm"
    x = load_file(str(FIXTURES / "sae_lens" / "standard_layer_norm" / "reference.safetensors"))["x"]
    assert torch.equal(load_sae(tmp_path)(x), sae(x))
    with pytest.raises(BadArgument, match="pass decode\\(latents, x\\)"):
        sae.decode(sae.encode(x))


def fake_hub_cache(cache: Path, repo_id: str, subfolder: str, source: Path) -> None:
    """The layout huggingface_hub's cache has after a download of `subfolder` of `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit / subfolder)


def test_hub_id_loads_from_the_cache_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants

    fake_hub_cache(tmp_path, "someone/tiny-saes", "blocks.2.hook_resid_pre", FIXTURES / "sae_lens" / "topk")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae = load_sae("hf:someone/tiny-saes/blocks.2.hook_resid_pre")
    assert (sae.meta["layer"], sae.meta["site"]) == (2, "resid_pre")


def test_hub_id_offline_and_not_cached_fails_fast_and_clearly(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadArgument, match="not in the Hugging Face cache and the hub cannot be reached"):
        load_sae("hf:someone/tiny-saes/layers.3")
    with pytest.raises(BadArgument, match="hf:<owner>/<repo>/<subfolder>"):
        load_sae("hf:just-a-name")
