"""Tiny random LMs built from a config in code: tests never touch a model hub."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saelib.lm import LM  # noqa: E402

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
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAINING_TEXT * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_tiny_lm(arch: str = "llama", n_layers: int = 4, d_model: int = 64, seed: int = 0) -> LM:
    """A random model of the given family; small enough that a forward takes milliseconds."""
    import transformers

    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=4,
                  intermediate_size=4 * d_model, max_position_embeddings=256)
    if arch == "llama":
        config = transformers.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=True, **common)
        model_cls = transformers.LlamaForCausalLM
    elif arch == "gpt_neox":
        config = transformers.GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **common)
        model_cls = transformers.GPTNeoXForCausalLM
    elif arch == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256)
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
