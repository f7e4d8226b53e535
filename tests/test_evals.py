"""Evaluations beyond reconstruction: absorption separates a planted absorbed feature from a clean one;
k-sparse probing finds a planted concept latent; both run on a tiny LM."""

import pytest
import torch

from saelib import evals
from saelib.sae import SAE, SAEConfig

N_LETTERS, TOKENS_PER_LETTER, COPIES = 4, 6, 8


def letter_tokens(noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token t of letter L is e_L + e_(N_LETTERS + t) plus noise, each token seen COPIES times."""
    n_tokens = N_LETTERS * TOKENS_PER_LETTER
    token = torch.arange(n_tokens).repeat(COPIES)
    letters = token // TOKENS_PER_LETTER
    d_in = N_LETTERS + n_tokens
    eye = torch.eye(d_in)
    gen = torch.Generator().manual_seed(0)
    acts = eye[letters] + eye[N_LETTERS + token] + noise * torch.randn(len(token), d_in, generator=gen)
    return acts, letters, token


def letter_sae(absorbed_tokens: list[int]) -> SAE:
    """One latent per letter and one per token, firing above 0.5; on `absorbed_tokens` the letter latent
    is suppressed and the token's latent reconstructs the letter direction too (absorption)."""
    n_tokens = N_LETTERS * TOKENS_PER_LETTER
    d = N_LETTERS + n_tokens
    sae = SAE(SAEConfig(d, d, arch="jumprelu"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.threshold.fill_(0.5)
        for t in absorbed_tokens:
            letter = t // TOKENS_PER_LETTER
            sae.W_enc[N_LETTERS + t, letter] = -2.0
            sae.W_dec[N_LETTERS + t, letter] = 1.0
    return sae


def test_absorption_separates_an_absorbed_letter_from_a_clean_one():
    acts, letters, _ = letter_tokens()
    clean = evals.absorption(letter_sae([]), acts, letters)
    # letter 0: half of its tokens absorbed by token latents
    absorbed = evals.absorption(letter_sae([0, 1, 2]), acts, letters)
    assert clean["absorption_rate"] == pytest.approx(0.0, abs=0.02)
    assert absorbed["absorption_rate"] == pytest.approx(0.5 / N_LETTERS, abs=0.03)
    assert clean["first_letter_f1"] > 0.99 and absorbed["first_letter_f1"] < 0.96  # letter 0 recalls half


def test_sparse_probing_finds_the_concept_latent():
    gen = torch.Generator().manual_seed(0)
    concepts = ["a", "b", "c"] * 40
    scores = torch.rand(len(concepts), 30, generator=gen)
    for i, concept in enumerate(concepts):  # latent 7 fires on "a" texts, latent 9 on "b"
        scores[i, {"a": 7, "b": 9, "c": 11}[concept]] += 2
    result = evals.sparse_probing(scores[:60], concepts[:60], scores[60:], concepts[60:], ks=(1, 2))
    assert result == {"sparse_probe_acc_k1": 1.0, "sparse_probe_acc_k2": 1.0}
    noise = evals.sparse_probing(scores[:60, :5], concepts[:60], scores[60:, :5], concepts[60:], ks=(1,))
    assert noise["sparse_probe_acc_k1"] < 0.75


def test_probing_metrics_on_a_tiny_lm(tiny_llama):
    layer = 1
    concepts = evals.concept_activations(tiny_llama, layer, "resid")
    letters = evals.letter_activations(tiny_llama, layer, "resid")
    assert (
        len(concepts.acts) == len(concepts.concepts)
        and concepts.is_train.any()
        and (~concepts.is_train).any()
    )
    assert len(letters.acts) == len(letters.tokens) and all(t.startswith(" ") for t in letters.tokens)
    d = tiny_llama.d_model
    sae = SAE(SAEConfig(d, 2 * d, arch="relu"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
    metrics = evals.probing_metrics(sae, evals.ProbeData(concepts, letters))
    probe_keys = {f"sparse_probe_acc_k{k}" for k in evals.SPARSE_PROBE_KS}
    assert set(metrics) == {*probe_keys, "absorption_rate", "first_letter_f1"}
    # a random LM's probe knows no first letters: no absorption rate, not an error
    assert all(0 <= value <= 1 for value in metrics.values() if value is not None)


def test_sparse_probing_picks_a_quiet_informative_latent_over_a_loud_noisy_one():
    """A rare concept (1 text in 10, as one concept against the others in the concept file): latent 0 is
    loud noise (spread 100), latent 1 a quiet signal (0.1 higher on the concept, spread 0.02). Ranking by
    the raw mean gap picked the loud latent, and an unweighted fit never predicted the rare class: both
    gave chance-level accuracy on the real model."""
    gen = torch.Generator().manual_seed(0)

    def texts(n: int) -> tuple[torch.Tensor, list[str]]:
        concepts = ["rare" if i % 10 == 0 else "rest" for i in range(n)]
        is_rare = torch.tensor([c == "rare" for c in concepts]).float()
        loud = 100 * torch.randn(n, generator=gen)
        quiet = 0.1 * is_rare + 0.02 * torch.randn(n, generator=gen)
        return torch.stack([loud, quiet], dim=1), concepts

    train_scores, train_concepts = texts(300)
    test_scores, test_concepts = texts(100)
    result = evals.sparse_probing(train_scores, train_concepts, test_scores, test_concepts, ks=[1])
    assert result["sparse_probe_acc_k1"] > 0.95
