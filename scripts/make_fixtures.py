"""Write tiny SAEs saved by SAE Lens, EleutherAI sparsify and dictionary_learning themselves, with each
library's own outputs on fixed inputs, under tests/fixtures/; tests/test_formats.py checks saelib's
readers against them.

    python scripts/make_fixtures.py      # from the repository root; builds /tmp/fixvenv the first time

None of these libraries is a saelib dependency: they live in a throwaway venv (FIXTURE_VENV, default
/tmp/fixvenv). torch is pinned to the project's CPU build, or pip pulls a multi-GB CUDA build, and the
torchvision that nnsight drags in (built for another torch) is removed. At the end, saelib loads every
fixture and the script prints the max abs difference to the library's outputs (exit 1 above 1e-5).

Each fixture folder holds the library's files plus reference.safetensors: x [N, d_in], the library's
latents [N, d_sae] and its reconstruction [N, d_in]; expected.json says what saelib should read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(os.environ.get("FIXTURE_VENV", "/tmp/fixvenv"))
TORCH = "torch==2.13.0"
LIBRARIES = ("sae-lens==6.54.12", "eai-sparsify==1.3.3", "dictionary-learning==0.1.0")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures"
D_IN, D_SAE, K, N = 16, 48, 4, 32
TOLERANCE = 1e-5


def ensure_venv() -> Path:
    """The venv's python, creating the venv with the three libraries the first time."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH], check=True)
        constraints = VENV / "constraints.txt"
        constraints.write_text(TORCH + "\n")
        subprocess.run([*pip, "-c", str(constraints), *LIBRARIES], check=True)
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)
    return python


def randomize(module, generator) -> None:
    """Gaussian weights (std 0.5) so that a fraction of latents fire; thresholds uniform in [0, 0.5]."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if "threshold" in name:
                param.copy_(torch.rand(param.shape, generator=generator) * 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def write_reference(folder: Path, x, latents, recon, expected: dict) -> None:
    from safetensors.torch import save_file

    tensors = {"x": x, "latents": latents, "recon": recon}
    save_file(
        {name: t.detach().float().contiguous() for name, t in tensors.items()},
        folder / "reference.safetensors",
    )
    (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


def sae_lens_fixtures(x, generator) -> None:
    """SAE Lens 6.x folders via save_model / save_inference_model; a 5.x flat config read by its converter."""
    import torch
    from sae_lens import (
        SAE,
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    def metadata(hook: str) -> SAEMetadata:
        return SAEMetadata(model_name="tiny-llama", hook_name=hook, context_size=64, dataset_path="builtin")

    resid = "blocks.1.hook_resid_post"
    inference = {
        "standard": StandardSAE(StandardSAEConfig(D_IN, D_SAE, metadata=metadata(resid))),
        "standard_constant_norm_rescale": StandardSAE(
            StandardSAEConfig(
                D_IN, D_SAE, normalize_activations="constant_norm_rescale", metadata=metadata(resid)
            )
        ),
        "standard_layer_norm": StandardSAE(
            StandardSAEConfig(D_IN, D_SAE, normalize_activations="layer_norm", metadata=metadata(resid))
        ),
        "topk": TopKSAE(TopKSAEConfig(D_IN, D_SAE, k=K, metadata=metadata("blocks.2.hook_resid_pre"))),
        "topk_rescaled": TopKSAE(
            TopKSAEConfig(D_IN, D_SAE, k=K, rescale_acts_by_decoder_norm=True, metadata=metadata(resid))
        ),
        "jumprelu_no_b_dec_input": JumpReLUSAE(  # Gemma Scope's setting
            JumpReLUSAEConfig(
                D_IN, D_SAE, apply_b_dec_to_input=False, metadata=metadata("blocks.1.hook_mlp_out")
            )
        ),
    }
    for name, sae in inference.items():
        randomize(sae, generator)
        sae.save_model(OUT / "sae_lens" / name)

    batchtopk = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(D_IN, D_SAE, k=K, metadata=metadata(resid)))
    randomize(batchtopk, generator)
    batchtopk.topk_threshold = torch.tensor(0.8)
    batchtopk.save_inference_model(OUT / "sae_lens" / "batchtopk")

    flat = OUT / "sae_lens" / "v5_flat_topk"  # how SAE Lens 5.x wrote a TopK SAE
    v5 = TopKSAE(TopKSAEConfig(D_IN, D_SAE, k=K))
    randomize(v5, generator)
    v5.save_model(flat)
    (flat / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": D_IN,
                "d_sae": D_SAE,
                "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": K},
                "apply_b_dec_to_input": True,
                "finetuning_scaling_factor": False,
                "context_size": 64,
                "model_name": "tiny-gpt2",
                "hook_name": "blocks.2.hook_attn_out",
                "hook_layer": 2,
                "hook_head_index": None,
                "prepend_bos": True,
                "dataset_path": "builtin",
                "dataset_trust_remote_code": False,
                "normalize_activations": "none",
                "dtype": "float32",
                "device": "cpu",
                "sae_lens_training_version": "5.9.1",
            }
        )
    )

    for folder in sorted((OUT / "sae_lens").iterdir()):
        sae = SAE.load_from_disk(folder)  # as SAE Lens reads its own files
        latents = sae.encode(x)
        recon = sae.decode(latents)  # right after encode: the input norm's statistics are still set
        meta = sae.cfg.metadata
        expected = {"model": meta.model_name, "hook_name": meta.hook_name}
        write_reference(folder, x, latents, recon, expected)


def sparsify_fixtures(x, generator) -> None:
    """A sparsify run folder: config.json (RunConfig) and one Sae.save_to_disk folder per hookpoint."""
    import torch
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.__main__ import RunConfig

    run = OUT / "sparsify" / "run"
    hookpoints = ["layers.1", "layers.2.mlp"]
    cfg = SparseCoderConfig(num_latents=D_SAE, k=K)
    run.mkdir(parents=True)
    RunConfig(sae=cfg, model="tiny-llama", hookpoints=hookpoints).save_json(run / "config.json")
    for hookpoint in hookpoints:
        sae = SparseCoder(D_IN, cfg)
        randomize(sae, generator)
        sae.save_to_disk(run / hookpoint)
        sae = SparseCoder.load_from_disk(run / hookpoint)
        out = sae.encode(x)
        latents = torch.zeros(N, D_SAE).scatter_(-1, out.top_indices, out.top_acts)
        recon = sae.decode(out.top_acts, out.top_indices)
        write_reference(run / hookpoint, x, latents, recon, {"model": "tiny-llama", "hook_name": hookpoint})


def dictionary_learning_fixtures(x, generator) -> None:
    """ae.pt + config.json as dictionary_learning's trainSAE writes them, one per dictionary class."""
    import torch
    from dictionary_learning.trainers import BatchTopKTrainer, JumpReluTrainer, StandardTrainer, TopKTrainer

    common = {
        "steps": 10_000,
        "activation_dim": D_IN,
        "dict_size": D_SAE,
        "lm_name": "tiny-pythia",
        "device": "cpu",
    }
    trainers = {
        "standard": StandardTrainer(layer=1, submodule_name="resid_post_layer_1", **common),
        "topk": TopKTrainer(k=K, layer=2, submodule_name="mlp_out_layer_2", **common),
        "batchtopk": BatchTopKTrainer(k=K, layer=1, submodule_name="resid_post_layer_1", **common),
        "jumprelu": JumpReluTrainer(layer=3, submodule_name="attn_out_layer_3", **common),
    }
    for name, trainer in trainers.items():
        folder = OUT / "dictionary_learning" / name
        folder.mkdir(parents=True)
        ae = trainer.ae
        randomize(ae, generator)
        if name == "batchtopk":
            ae.threshold = torch.tensor(0.4)
        torch.save({key: value.cpu() for key, value in ae.state_dict().items()}, folder / "ae.pt")
        (folder / "config.json").write_text(json.dumps({"trainer": trainer.config}, indent=4))
        with torch.no_grad():
            latents = ae.encode(x)
            recon = ae.decode(latents)
        layer, site = trainer.config["layer"], trainer.config["submodule_name"].rsplit("_layer_", 1)[0]
        write_reference(
            folder, x, latents, recon, {"model": "tiny-pythia", "layer": layer, "submodule": site}
        )


def check_with_saelib() -> bool:
    """saelib's encode/forward on every fixture against the library's latents and reconstruction."""
    sys.path.insert(0, str(ROOT))
    from safetensors.torch import load_file

    from saelib.sae import load_sae

    ok = True
    for reference in sorted(OUT.rglob("reference.safetensors")):
        ref = load_file(str(reference))
        sae = load_sae(reference.parent)
        latents_diff = (sae.encode(ref["x"]) - ref["latents"]).abs().max().item()
        recon_diff = (sae(ref["x"]) - ref["recon"]).abs().max().item()
        l0 = (ref["latents"] > 0).float().sum(1).mean().item()
        name = reference.parent.relative_to(OUT)
        diffs = f"max|dlatents| {latents_diff:.1e}  max|drecon| {recon_diff:.1e}"
        print(f"{str(name):40} {sae.cfg.arch:9} L0 {l0:5.1f}  {diffs}")
        ok &= max(latents_diff, recon_diff) <= TOLERANCE
    return ok


def main() -> int:
    import importlib.metadata

    import torch

    for library in ("sae_lens", "sparsify", "dictionary_learning"):
        shutil.rmtree(OUT / library, ignore_errors=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=generator) * 2 + 0.3
    with torch.no_grad():
        sae_lens_fixtures(x, generator)
        sparsify_fixtures(x, generator)
        dictionary_learning_fixtures(x, generator)
    versions = {
        name: importlib.metadata.version(name)
        for name in ("torch", *(lib.split("==")[0] for lib in LIBRARIES))
    }
    (OUT / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print("fixtures written by", versions)
    return 0 if check_with_saelib() else 1


if __name__ == "__main__":
    if Path(sys.prefix).resolve() != VENV.resolve():
        sys.exit(subprocess.run([str(ensure_venv()), __file__, *sys.argv[1:]]).returncode)
    sys.exit(main())
