"""Evaluations beyond reconstruction: absorption separates a planted absorbed feature from a clean one;
k-sparse probing finds a planted concept latent; both run on a tiny LM."""

import pytest
import torch

from saelib import evals, probes
from saelib.sae import SAE, SAEConfig

N_LETTERS, TOKENS_PER_LETTER, COPIES = 4, 40, 5
ABSORBED = list(range(8))  # tokens 0-7, a fifth of letter 0's


def letter_data() -> evals.LetterActivations:
    """Token t of letter L is e_L + e_(N_LETTERS + t) plus noise (the LM knows the letter of every
    token), each token seen COPIES times; the first-letter probe fit on them."""
    n_tokens = N_LETTERS * TOKENS_PER_LETTER
    token = torch.arange(n_tokens).repeat(COPIES)
    letters = token // TOKENS_PER_LETTER
    d_in = N_LETTERS + n_tokens
    eye = torch.eye(d_in)
    gen = torch.Generator().manual_seed(0)
    acts = eye[letters] + eye[N_LETTERS + token] + 0.05 * torch.randn(len(token), d_in, generator=gen)
    return evals.fit_letter_probe(acts, letters, [f" t{t}" for t in token.tolist()])


def letter_sae(absorbed: list[int] = (), letter_left: float = 0.0) -> SAE:
    """One latent per letter and one per token, firing above 0.2. On the `absorbed` tokens the token's
    latent takes over 1 - letter_left of the letter direction: its decoder row carries that part, and the
    letter latent's input is lowered to letter_left (0: silent, full absorption; 0.4: partial)."""
    n_tokens = N_LETTERS * TOKENS_PER_LETTER
    d = N_LETTERS + n_tokens
    sae = SAE(SAEConfig(d, d, arch="jumprelu"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.threshold.fill_(0.2)
        for t in absorbed:
            letter = t // TOKENS_PER_LETTER
            sae.W_enc[N_LETTERS + t, letter] = letter_left - 1 if letter_left else -2.0
            sae.W_dec[N_LETTERS + t, letter] = 1 - letter_left
    return sae


def test_absorption_separates_an_absorbed_letter_from_a_clean_one():
    data = letter_data()
    assert data.probe_f1()[:N_LETTERS].min() > 0.99  # the premise: a linear probe knows every token's letter
    clean = evals.absorption_by_letter(letter_sae(), data)
    assert [row["main_latents"] for row in clean] == [[0], [1], [2], [3]]
    assert all(row["full_absorption"] == row["absorption_fraction"] == 0 for row in clean)
    # a fifth of letter 0's tokens fully absorbed: the letter latent is silent, token latents carry it;
    # each absorbing latent covers one token, too little to count as a split of the letter feature
    absorbed = evals.absorption_by_letter(letter_sae(ABSORBED), data)
    assert absorbed[0]["main_latents"] == [0]
    assert absorbed[0]["full_absorption"] == pytest.approx(0.2, abs=0.05)
    assert absorbed[0]["absorption_fraction"] == pytest.approx(0.2, abs=0.05)
    assert all(row["full_absorption"] == 0 for row in absorbed[1:])
    summary = evals.absorption(letter_sae(ABSORBED), data)
    assert summary["absorption_rate"] == pytest.approx(0.2 / N_LETTERS, abs=0.015)
    assert (
        summary["first_letter_probe_f1"] > 0.99 and summary["first_letter_f1"] < 0.99
    )  # letter 0 recalls 4/5
    assert evals.absorption(letter_sae(), data)["first_letter_f1"] > 0.99


def test_partial_absorption_counts_in_the_fraction_only():
    """The letter latent still fires (at 0.4) on the absorbed tokens: no full absorption, but token
    latents carry 0.6 of the letter direction plus their own part of the probe's projection."""
    partial = evals.absorption_by_letter(letter_sae(ABSORBED, letter_left=0.4), letter_data())[0]
    assert partial["full_absorption"] == 0
    assert 0.2 * 0.55 <= partial["absorption_fraction"] <= 0.2 * 0.8


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
    assert letters.probe_weight.shape == (tiny_llama.d_model, len(evals.LETTERS))
    d = tiny_llama.d_model
    sae = SAE(SAEConfig(d, 2 * d, arch="relu"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        sae.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
    metrics = probes.probing_metrics(sae, probes.ProbeData(concepts, letters))
    probe_keys = {f"sparse_probe_acc_k{k}" for k in evals.SPARSE_PROBE_KS}
    absorption_keys = {"absorption_rate", "absorption_fraction", "first_letter_f1", "first_letter_probe_f1"}
    assert set(metrics) == probe_keys | absorption_keys
    # a random LM's probe knows few first letters: scores over the letters it knows, or None, not an error
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
