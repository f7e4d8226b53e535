"""Evaluations beyond reconstruction, in the style of SAEBench (Karvonen et al., 2025), run offline.

k-sparse probing (Gurnee et al., 2023; Gao et al., 2024): can k latents alone tell a concept's texts
(saelib/data/concepts.jsonl) from the others? For each concept, the k latents whose mean max-over-tokens
activation differs most between the concept's train texts and the rest are picked, a logistic
regression is fitted on those k values, and its balanced accuracy is measured on the held-out texts.

First-letter absorption (Chanin et al., 2024, "A is for Absorption"; SAEBench's variant): a linear probe
on the LM's activations knows the first letter of a vocabulary token. For each letter, the latent
that best predicts it (highest F1 on the train tokens) is its main latent. A held-out token the probe
gets right is *absorbed* when the main latent stays silent yet other latents carry at least half of
the token's projection on the probe direction: a more specific latent (e.g. "starts with s" folded
into "snake") took the general feature over. Each token is read on its own after the sink token,
where SAEBench uses an in-context prompt.

The LM-side activations (`concept_activations`, `letter_activations`) do not depend on the SAE: compute
them once and evaluate many SAEs on them (the architecture frontier does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saelib.corpus import load_concepts
from saelib.errors import BadArgument
from saelib.sae import SAE

SPARSE_PROBE_KS = (1, 2, 5)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class ConceptActivations:
    """Per-token LM activations of the concept texts (sink token dropped), with their concept and split."""

    acts: list[Tensor]  # one [n_tokens, d_in] per text
    concepts: list[str]
    is_train: Tensor  # [n_texts] bool


@dataclass
class LetterActivations:
    """LM activations of single vocabulary tokens and the index of their first letter in LETTERS."""

    acts: Tensor  # [n_tokens, d_in]
    letters: Tensor  # [n_tokens] long
    tokens: list[str]


def concept_activations(
    lm, layer: int, site: str, batch_size: int = 32, max_length: int = 64
) -> ConceptActivations:
    """Run the LM once over the bundled concept texts (both splits)."""
    docs = {"train": load_concepts("train"), "heldout": load_concepts("heldout")}
    acts, concepts, is_train = [], [], []
    for split, split_docs in docs.items():
        for start in range(0, len(split_docs), batch_size):
            batch = split_docs[start : start + batch_size]
            token_acts = lm.activations(
                [d.text for d in batch], layer=layer, site=site, max_length=max_length
            )
            acts.extend(a[1:] for a in token_acts.acts)
            concepts.extend(d.concept for d in batch)
            is_train.extend([split == "train"] * len(batch))
    return ConceptActivations(acts, concepts, torch.tensor(is_train))


def letter_activations(
    lm, layer: int, site: str, max_tokens: int = 4000, batch_size: int = 512
) -> LetterActivations:
    """Activations of the vocabulary's whole-word tokens (" cat": a space, then 2+ ASCII letters), each
    read after the sink token; an evenly spaced subset of at most `max_tokens`."""
    words = []
    for token_id in range(len(lm.tokenizer)):
        text = lm.tokenizer.decode([token_id])
        word = text[1:].lower()
        if text.startswith(" ") and len(word) >= 2 and word.isascii() and word.isalpha():
            words.append((token_id, text))
    if not words:
        raise BadArgument(f"{lm.name}'s vocabulary has no ' word' tokens to probe first letters on")
    words = words[:: max(1, len(words) // max_tokens)][:max_tokens]
    ids = torch.tensor([token_id for token_id, _ in words])
    sink = lm.sink_id if lm.sink_id is not None else lm.tokenizer.bos_token_id
    acts = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        input_ids = torch.stack([torch.full_like(chunk, sink), chunk], 1).to(lm.device)
        acts.append(lm.forward_to(input_ids, torch.ones_like(input_ids), layer, site)[:, 1].cpu())
    letters = torch.tensor([LETTERS.index(text[1].lower()) for _, text in words])
    return LetterActivations(torch.cat(acts), letters, [text for _, text in words])


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, weight_decay: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on standardised x (L-BFGS), classes weighted by inverse frequency so
    a rare class (one concept against all others) is not simply never predicted; returns (weights
    [d, n_classes], bias) in the units of the raw x."""
    counts = torch.bincount(y, minlength=n_classes).float()
    class_weight = counts.sum() / (n_classes * counts.clamp_min(1))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, y, weight=class_weight) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach() / std[:, None], bias.detach()
    return weight, bias - mean @ weight


def sparse_probing(
    train_scores: Tensor,
    train_concepts: Sequence[str],
    test_scores: Tensor,
    test_concepts: Sequence[str],
    ks: Sequence[int] = SPARSE_PROBE_KS,
) -> dict[str, float]:
    """Mean over concepts of the held-out balanced accuracy of a probe on the top-k latents, per k.

    Scores are [n_texts, d_sae] text-level latent activations; one concept name per text."""
    concepts = sorted(set(train_concepts) & set(test_concepts))
    if not concepts:
        raise BadArgument("sparse probing needs concepts present in both the train and held-out texts")
    results = {k: [] for k in ks}
    for concept in concepts:
        y_train = torch.tensor([c == concept for c in train_concepts]).long()
        y_test = torch.tensor([c == concept for c in test_concepts])
        # the class-mean gap in units of each latent's spread: a raw gap favours the loudest latents
        gap = train_scores[y_train == 1].mean(0) - train_scores[y_train == 0].mean(0)
        ranked = (gap.abs() / train_scores.std(0).clamp_min(1e-6)).argsort(descending=True)
        for k in ks:
            latents = ranked[:k]
            weight, bias = fit_logistic(train_scores[:, latents], y_train, 2)
            predicted = (test_scores[:, latents] @ weight + bias).argmax(1) == 1
            recall = (predicted & y_test).sum() / y_test.sum().clamp_min(1)
            specificity = (~predicted & ~y_test).sum() / (~y_test).sum().clamp_min(1)
            results[k].append(((recall + specificity) / 2).item())
    return {f"sparse_probe_acc_k{k}": sum(accs) / len(accs) for k, accs in results.items()}


@torch.no_grad()
def concept_sparse_probing(
    sae: SAE, data: ConceptActivations, ks: Sequence[int] = SPARSE_PROBE_KS
) -> dict[str, float]:
    """`sparse_probing` on the SAE's max-over-tokens latents of the concept texts."""
    device = sae.W_dec.device
    scores = torch.stack([sae.encode(acts.to(device)).max(0).values.cpu() for acts in data.acts])
    train, concepts = data.is_train, data.concepts
    return sparse_probing(
        scores[train],
        [c for c, t in zip(concepts, train.tolist()) if t],
        scores[~train],
        [c for c, t in zip(concepts, train.tolist()) if not t],
        ks,
    )


@torch.no_grad()
def absorption(
    sae: SAE, acts: Tensor, letters: Tensor, min_share: float = 0.5, min_tokens: int = 10
) -> dict[str, float | None]:
    """First-letter absorption rate (mean over letters with `min_tokens` probe-correct held-out tokens,
    None if there are none) and the mean F1 of each letter's main latent on the held-out tokens.

    Tokens of even index train the probe and choose the main latents, odd ones are held out."""
    n_letters = int(letters.max()) + 1
    train = torch.arange(len(acts)) % 2 == 0
    weight, bias = fit_logistic(acts[train], letters[train], n_letters)
    probe_right = (acts @ weight + bias).argmax(1) == letters
    directions = F.normalize(weight, dim=0)  # [d_in, n_letters]
    latents = sae.encode(acts.to(sae.W_dec.device)).cpu()
    fires = latents > 0
    W_dec, b_dec = sae.W_dec.cpu(), sae.b_dec.cpu()
    along = (W_dec @ directions).clamp_min(0)  # [d_sae, n_letters] each latent's push along a probe
    rates, f1s = [], []
    for letter in range(n_letters):
        is_letter = letters == letter
        main = _best_f1(fires[train], is_letter[train]).argmax()
        test = ~train
        f1s.append(_best_f1(fires[test][:, main : main + 1], is_letter[test]).item())
        right = test & is_letter & probe_right
        if right.sum() < max(1, min_tokens):
            continue
        x_along = (acts[right] - b_dec) @ directions[:, letter]
        others = latents[right] * along[:, letter]
        others[:, main] = 0
        silent = ~fires[right, main]
        absorbed = silent & (others.sum(1) >= min_share * x_along.clamp_min(1e-6))
        rates.append(absorbed.float().mean().item())
    # None when no letter has enough probe-correct tokens (a random LM's probe knows no letters)
    rate = sum(rates) / len(rates) if rates else None
    return {"absorption_rate": rate, "first_letter_f1": sum(f1s) / len(f1s)}


def _best_f1(fires: Tensor, positive: Tensor) -> Tensor:
    """F1 of 'latent fires' as a predictor of `positive`, per latent: [n, d] bool, [n] bool -> [d]."""
    true_pos = fires[positive].sum(0).float()
    predicted = fires.sum(0).float()
    return 2 * true_pos / (predicted + positive.sum()).clamp_min(1)


@dataclass
class ProbeData:
    """What the evaluations read from the LM, computed once for any number of SAEs."""

    concepts: ConceptActivations
    letters: LetterActivations


def probe_data(lm, layer: int, site: str) -> ProbeData:
    return ProbeData(concept_activations(lm, layer, site), letter_activations(lm, layer, site))


def probing_metrics(sae: SAE, probes: ProbeData, min_tokens: int = 10) -> dict[str, float | None]:
    """k-sparse probing and first-letter absorption of one SAE on precomputed LM activations."""
    letters = probes.letters
    return {
        **concept_sparse_probing(sae, probes.concepts),
        **absorption(sae, letters.acts, letters.letters, min_tokens=min_tokens),
    }
