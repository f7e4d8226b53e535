"""Shared builders: tiny random LMs from a config in code (tests never touch a model hub), random and
identity SAEs, small stores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saelib.lm import LM
from saelib.sae import SAE, SAEConfig

TRAINING_TEXT = [
    "Dogs are man's best friend. Cats sleep all day in the sun.",
    "Neural networks process information with layers of weights.",
    "London is a major city. Paris is the capital of France.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "The weather today is cold and rainy, tomorrow sunny and warm.",
    "Numbers: 1, 2, 3, 42, 1000. Seven plus five is twelve.",
    "Le chat est sur la table. Der Hund schläft. El perro come.",
]


def make_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_tiny_lm(arch: str = "llama", n_layers: int = 4, d_model: int = 64, seed: int = 0) -> LM:
    """A random model of the given family; small enough that a forward takes milliseconds."""
    import transformers

    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    common = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=4 * d_model,
        max_position_embeddings=256,
    )
    if arch == "llama":
        config = transformers.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=True, **common)
        model_cls = transformers.LlamaForCausalLM
    elif arch == "gpt_neox":
        config = transformers.GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **common)
        model_cls = transformers.GPTNeoXForCausalLM
    elif arch == "gpt2":
        end = tokenizer.eos_token_id  # GPT-2's own 50256 lies outside the tiny vocabulary
        config = transformers.GPT2Config(
            vocab_size=vocab,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=4,
            n_positions=256,
            bos_token_id=end,
            eos_token_id=end,
        )
        model_cls = transformers.GPT2LMHeadModel
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    return LM.from_model(model_cls(config).eval(), tokenizer, name=f"tiny-{arch}")


@pytest.fixture(scope="session")
def tiny_llama() -> LM:
    return make_tiny_lm("llama")


@pytest.fixture(scope="session")
def tiny_neox() -> LM:
    return make_tiny_lm("gpt_neox")


@pytest.fixture(scope="session")
def tiny_gpt2() -> LM:
    return make_tiny_lm("gpt2")


def random_sae(
    arch: str = "topk",
    d_in: int = 12,
    d_sae: int = 40,
    k: int = 5,
    seed: int = 0,
    scale: float = 0.5,
    b_enc: float | None = None,
    layer: int = 2,
    site: str = "resid",
) -> SAE:
    """An SAE with Gaussian weights (std `scale`); `b_enc` fills the encoder bias instead (e.g. -1 so a
    ReLU SAE stays sparse); thresholds uniform in [0, 0.3]."""
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in, d_sae, arch=arch, k=k), meta={"model": "tiny", "layer": layer, "site": site})
    with torch.no_grad():
        for param in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
        if b_enc is not None:
            sae.b_enc.fill_(b_enc)
        if arch in ("jumprelu", "batchtopk"):
            sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.3)
    return sae.eval()


def identity_sae(d: int, arch: str = "relu", signed: bool = False, layer: int = 1) -> SAE:
    """Latent j of a row is relu(x_j); with `signed`, latents +x and -x in two halves reconstruct any x."""
    eye = torch.eye(d)
    W_enc, W_dec = (torch.cat([eye, -eye], dim=1), torch.cat([eye, -eye], dim=0)) if signed else (eye, eye)
    sae = SAE(
        SAEConfig(d, W_enc.shape[1], arch=arch, k=d), meta={"model": "tiny", "layer": layer, "site": "resid"}
    )
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
    return sae.eval()


@pytest.fixture(scope="session")
def text_sae(tiny_llama) -> SAE:
    """A sparse random ReLU SAE on the tiny LM's layer-1 residual; b_dec is zero because the tiny LM's
    activations are small and a random b_dec would swamp them (every text would get the same features)."""
    sae = random_sae("relu", tiny_llama.d_model, 96, scale=5.0, b_enc=-1.0, layer=1)
    torch.nn.init.zeros_(sae.b_dec)
    return sae


def save_tiny_run(lm: LM, run_dir: Path, sae_dir: Path | None = None, n_texts: int = 300) -> SAE:
    """A run folder 03_analyze can open, all from the tiny LM: the LM saved as a local model directory
    (run_dir/model), its layer-1 activations of concept sentences (run_dir/activations) and a sparse
    random ReLU SAE (in `sae_dir`, default run_dir/sae) whose metadata names no loadable model."""
    from saelib.collection import collect
    from saelib.corpus import load_concepts

    run_dir.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(run_dir / "model")
    lm.tokenizer.save_pretrained(run_dir / "model")
    texts = load_concepts()[:n_texts]
    collect(lm, texts, run_dir / "activations", layer=1, max_tokens_per_text=32, progress=False)
    sae = random_sae("relu", lm.d_model, 96, scale=5.0, b_enc=-1.0, layer=1)
    torch.nn.init.zeros_(sae.b_dec)
    sae.save(sae_dir or run_dir / "sae", metadata={"model": lm.name})
    return sae
