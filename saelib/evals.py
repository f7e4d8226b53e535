"""Evaluations beyond reconstruction, in the style of SAEBench (Karvonen et al., 2025), run offline.

k-sparse probing (Gurnee et al., 2023; Gao et al., 2024): can k latents alone tell a concept's texts
(saelib/data/concepts.jsonl) from the others? For each concept, the k latents whose mean max-over-tokens
activation differs most between the concept's train texts and the rest are picked, a logistic
regression is fitted on those k values, and its balanced accuracy is measured on the held-out texts.

First-letter absorption (Chanin et al., 2024, "A is for Absorption", as implemented in SAEBench):
1. (LM, once) Each single-token vocabulary word (" apple": a space, then 2+ letters) is read as the next
   token after SAEBench's in-context prompt, ten lines "<word> has the first letter: <LETTER>". What the
   template puts after the word cannot change the activation at it (the LM is causal), so it is left off.
   A linear probe for the first letter is fit on 80% of the words (`LetterActivations`); its held-out F1
   per letter is the premise: the LM knows the letter, linearly, at this layer.
2. (per SAE) Each letter's main latents, by k-sparse probing on the latents: latents ranked by their
   class-mean gap, k grows from 1 while the held-out F1 of a logistic probe on the top k rises by more
   than 0.03 (SAEBench's rule: a feature split over k latents).
3. (per SAE) On the held-out words of the letter that the probe gets right, SAEBench's two scores:
   full absorption: the main latents are all silent, yet one latent (decoder cosine to the probe >= 0.025)
   carries >= 40% of the activation's projection on the probe direction (a specific latent, "snake",
   took "starts with s" over); the absorption fraction (Till): the share of that projection carried by up
   to 3 other probe-aligned latents (cosine >= 0.1) instead of the main ones, counted once they carry
   >= 40%. Both are averaged over each letter's words, then over letters whose probe F1 is >= 0.6.
   Unlike SAEBench, the projections are of x - b_dec (what the latents reconstruct) and a latent's share
   is its activation times its decoder row's projection (SAEBench: times the cosine; equal for unit rows).
Read the scores with `first_letter_f1` beside `first_letter_probe_f1`: absorption is measured against
main latents, so an SAE without first-letter latents (main F1 far below the probe's) scores ~0 because
there is nothing to absorb, not because its features are clean. SAEBench recommends LMs of >= 2B params.

The LM-side activations (`concept_activations`, `letter_activations`) do not depend on the SAE: compute
them once and evaluate many SAEs on them (the architecture frontier does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saelib.batching import text_activations
from saelib.corpus import load_concepts
from saelib.errors import BadArgument
from saelib.sae import SAE

SPARSE_PROBE_KS = (1, 2, 5)
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# SAEBench's in-context prompt, "{word} has the first letter:{answer}" per line; the word read comes next
LETTER_PROMPT = (
    "".join(
        f"\n {word} has the first letter: {word[0].upper()}"
        for word in ("dog", "yellow", "house", "river", "paper", "moon", "kind", "fast", "green", "table")
    )
    + "\n"
)
# SAEBench's thresholds (sae_bench/evals/absorption): feature split, probe quality, absorption
F1_JUMP, MIN_PROBE_F1, MAX_MAIN_LATENTS = 0.03, 0.6, 10
FULL_COS, FRACTION_COS, MIN_SHARE, MAX_ABSORBERS = 0.025, 0.1, 0.4, 3


@dataclass
class ConceptActivations:
    """Per-token LM activations of the concept texts (sink token dropped), with their concept and split."""

    acts: list[Tensor]  # one [n_tokens, d_in] per text
    concepts: list[str]
    is_train: Tensor  # [n_texts] bool

    def split(self, scores: Tensor) -> tuple[Tensor, list[str], Tensor, list[str]]:
        """Per-text `scores` [n_texts, ...] and concepts as (train scores, train concepts, held-out
        scores, held-out concepts)."""
        train = self.is_train.tolist()
        return (
            scores[self.is_train],
            [c for c, is_train in zip(self.concepts, train) if is_train],
            scores[~self.is_train],
            [c for c, is_train in zip(self.concepts, train) if not is_train],
        )


@dataclass
class LetterActivations:
    """LM activations of single-token words, their first letter, and a linear probe for it fit on the
    train split: weight [d_in, n_letters] and bias in the units of the raw activations."""

    acts: Tensor  # [n_tokens, d_in]
    letters: Tensor  # [n_tokens] long, index in LETTERS
    tokens: list[str]
    is_train: Tensor  # [n_tokens] bool
    probe_weight: Tensor
    probe_bias: Tensor

    @property
    def probe_right(self) -> Tensor:
        """[n_tokens] bool: the probe's most likely letter is the word's."""
        return (self.acts @ self.probe_weight + self.probe_bias).argmax(1) == self.letters

    def probe_f1(self) -> Tensor:
        """[n_letters] the probe's F1 per letter on the held-out words (NaN for a letter with none)."""
        test = ~self.is_train
        predicted = (self.acts[test] @ self.probe_weight + self.probe_bias).argmax(1)
        letters = range(self.probe_weight.shape[1])
        f1 = torch.stack([_f1(predicted == i, self.letters[test] == i) for i in letters])
        present = torch.bincount(self.letters[test], minlength=len(f1)) > 0
        return torch.where(present, f1, torch.nan)


def fit_letter_probe(acts: Tensor, letters: Tensor, tokens: list[str]) -> LetterActivations:
    """Fit the first-letter probe on 4 tokens in 5 (as SAEBench; the probe needs the data), holding out
    every fifth."""
    is_train = torch.arange(len(acts)) % 5 != 0
    weight, bias = fit_logistic(acts[is_train], letters[is_train], len(LETTERS))
    return LetterActivations(acts, letters, tokens, is_train, weight, bias)


def concept_activations(
    lm, layer: int, site: str, batch_size: int = 32, max_length: int = 128
) -> ConceptActivations:
    """Run the LM once over the bundled concept texts (both splits), batched by length."""
    docs = [(d, True) for d in load_concepts("train")] + [(d, False) for d in load_concepts("heldout")]
    token_ids = lm.token_ids([d.text for d, _ in docs], max_length)
    acts: list[Tensor | None] = [None] * len(docs)
    for batch, text_acts in text_activations(lm, token_ids, layer, site, batch_size):
        for i, one_text in zip(batch, text_acts):
            acts[i] = one_text[1:].cpu()  # the sink token dropped
    return ConceptActivations(acts, [d.concept for d, _ in docs], torch.tensor([t for _, t in docs]))


def letter_activations(
    lm, layer: int, site: str, max_tokens: int = 10000, batch_size: int = 256
) -> LetterActivations:
    """Activations of the vocabulary's whole-word tokens (" cat": a space, then 2+ ASCII letters), each
    read after SAEBench's in-context prompt (`LETTER_PROMPT`), an evenly spaced subset of at most
    `max_tokens`; and the first-letter probe fit on them."""
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
    acts = lm.next_token_activations(LETTER_PROMPT, ids, layer, site, batch_size)
    letters = torch.tensor([LETTERS.index(text[1].lower()) for _, text in words])
    return fit_letter_probe(acts, letters, [text for _, text in words])


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
    spread, total = train_scores.std(0).clamp_min(1e-6), train_scores.sum(0)
    for concept in concepts:
        y_train = torch.tensor([c == concept for c in train_concepts]).long()
        y_test = torch.tensor([c == concept for c in test_concepts])
        # the class-mean gap in units of each latent's spread: a raw gap favours the loudest latents
        n_pos = int(y_train.sum())
        pos_sum = train_scores[y_train == 1].sum(0)
        gap = pos_sum / n_pos - (total - pos_sum) / (len(y_train) - n_pos)
        ranked = (gap.abs() / spread).argsort(descending=True)
        for k in ks:
            latents = ranked[:k]
            weight, bias = fit_logistic(train_scores[:, latents], y_train, 2)
            predicted = (test_scores[:, latents] @ weight + bias).argmax(1) == 1
            recall = (predicted & y_test).sum() / y_test.sum().clamp_min(1)
            specificity = (~predicted & ~y_test).sum() / (~y_test).sum().clamp_min(1)
            results[k].append(((recall + specificity) / 2).item())
    return {f"sparse_probe_acc_k{k}": sum(accs) / len(accs) for k, accs in results.items()}


@torch.no_grad()
def concept_maxima(sae: SAE, data: ConceptActivations) -> Tensor:
    """[n_texts, d_sae] each concept text's max-over-tokens latents (its sink token already dropped)."""
    device, maxima = sae.W_dec.device, []
    for start in range(0, len(data.acts), 256):  # a few thousand tokens per GEMM, not one text's dozen
        texts = data.acts[start : start + 256]
        latents = sae.encode(torch.cat(texts).to(device, sae.W_dec.dtype)).split([len(a) for a in texts])
        maxima += [text_latents.max(0).values.float().cpu() for text_latents in latents]
    return torch.stack(maxima)


def concept_sparse_probing(
    sae: SAE, data: ConceptActivations, ks: Sequence[int] = SPARSE_PROBE_KS
) -> dict[str, float]:
    """`sparse_probing` on the SAE's max-over-tokens latents of the concept texts."""
    return sparse_probing(*data.split(concept_maxima(sae, data)), ks)


@torch.no_grad()
def absorption_by_letter(sae: SAE, data: LetterActivations) -> list[dict]:
    """Per letter with held-out words: their number, the probe's F1 on them, the main latents and their
    k-sparse probe's held-out F1, the probe's true positives among the held-out words, and SAEBench's
    full-absorption rate and mean absorption fraction on them (None without true positives)."""
    acts = data.acts.to(sae.W_dec.device)
    latents = sae.encode(acts).float().cpu()
    W_dec, b_dec = sae.W_dec.detach().float().cpu(), sae.b_dec.detach().float().cpu()
    directions = F.normalize(data.probe_weight, dim=0)  # [d_in, n_letters]
    push = W_dec @ directions  # [d_sae, n_letters]: what a unit of each latent adds along each probe
    cos = push / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
    x_along = (sae.normalized(acts).float().cpu() - b_dec) @ directions  # [n_tokens, n_letters]
    train, test = data.is_train, ~data.is_train
    train_latents, test_latents = latents[train], latents[test]
    candidates = _ranked_latents(train_latents, data.letters[train], len(LETTERS))
    probe_f1, probe_right = data.probe_f1(), data.probe_right
    rows = []
    for i, letter in enumerate(LETTERS):
        is_letter = data.letters == i
        if not (is_letter & test).any():
            continue
        ranked = candidates[i]
        k, main_f1 = _split_size(
            train_latents[:, ranked], is_letter[train], test_latents[:, ranked], is_letter[test]
        )
        main, right = ranked[:k], test & is_letter & probe_right
        row = {"letter": letter, "n_words": int((is_letter & test).sum()), "probe_f1": probe_f1[i].item()}
        row.update(main_latents=main.tolist(), main_f1=main_f1, n_probe_right=int(right.sum()))
        row.update(full_absorption=None, absorption_fraction=None)
        if right.any():
            shares = latents[right] * push[:, i]  # [n, d_sae] each latent's part of the projection
            full, fraction = _absorbed(
                shares, x_along[right, i], latents[right][:, main] > 0, main, cos[:, i]
            )
            row.update(full_absorption=full.float().mean().item(), absorption_fraction=fraction.mean().item())
        rows.append(row)
    return rows


def _ranked_latents(latents: Tensor, letters: Tensor, n_letters: int) -> Tensor:
    """[n_letters, MAX_MAIN_LATENTS] the latents firing most for each letter over the others: the
    class-mean gap in units of each latent's spread (a raw gap favours the loudest latents)."""
    onehot = F.one_hot(letters, n_letters).float()
    count = onehot.sum(0)[:, None]
    letter_sum = onehot.T @ latents  # [n_letters, d_sae]
    gap = letter_sum / count.clamp_min(1) - (latents.sum(0) - letter_sum) / (len(latents) - count).clamp_min(
        1
    )
    return (gap / latents.std(0).clamp_min(1e-6)).topk(min(MAX_MAIN_LATENTS, latents.shape[1]), dim=1).indices


def _split_size(
    train: Tensor, train_positive: Tensor, test: Tensor, test_positive: Tensor
) -> tuple[int, float]:
    """SAEBench's k-sparse probing on a letter's ranked latents [n, MAX_MAIN_LATENTS]: k starts at 1 and
    grows while the held-out F1 of a logistic probe on the first k rises by > F1_JUMP; returns k and
    that F1. As in SAEBench the top latent is always a main latent, however poor."""
    k, best = 0, -1.0
    while k < train.shape[1]:
        weight, bias = fit_logistic(train[:, : k + 1], train_positive.long(), 2)
        f1 = _f1((test[:, : k + 1] @ weight + bias).argmax(1) == 1, test_positive).item()
        if f1 <= best + F1_JUMP:
            break
        k, best = k + 1, f1
    return k, best


def _absorbed(
    shares: Tensor, x_along: Tensor, main_fires: Tensor, main: Tensor, cos: Tensor
) -> tuple[Tensor, Tensor]:
    """SAEBench's full absorption [n] bool and absorption fraction [n] of tokens whose projection on the
    probe direction is `x_along` [n], from each latent's share of it [n, d_sae]."""
    is_main = torch.zeros(len(cos), dtype=torch.bool)
    is_main[main] = True
    positive = x_along > 0
    top_share, top = shares.max(1)
    full = ~main_fires.any(1) & positive & (cos[top] >= FULL_COS) & (top_share >= MIN_SHARE * x_along)
    main_share = shares[:, is_main].sum(1)
    candidates = shares.masked_fill(is_main | (cos < FRACTION_COS), 0).clamp_min(0)
    absorbers = candidates.topk(min(MAX_ABSORBERS, len(cos)), dim=1).values.sum(1)
    absorbed = torch.minimum(absorbers, x_along - main_share)
    fraction = (absorbed / (absorbed + main_share).clamp_min(1e-8)).clamp(0, 1)
    fraction = torch.where(main_share <= 0, 1.0, fraction)
    counted = positive & (main_share < x_along) & (absorbers >= MIN_SHARE * x_along)
    return full, torch.where(counted, fraction, 0.0)


def absorption(sae: SAE, data: LetterActivations, min_tokens: int = 10) -> dict[str, float | None]:
    """SAEBench's first-letter absorption scores, mean over letters whose probe F1 is >= MIN_PROBE_F1 with
    >= `min_tokens` held-out true positives (None without any: a random LM's probe knows no letters):
    absorption_rate (full absorption), absorption_fraction, first_letter_f1 (the main latents'
    k-sparse probe); and first_letter_probe_f1, the residual probe's F1 (the premise), mean over the
    letters with >= `min_tokens` held-out words."""
    rows = absorption_by_letter(sae, data)
    kept = [r for r in rows if r["probe_f1"] >= MIN_PROBE_F1 and r["n_probe_right"] >= max(1, min_tokens)]
    common = [r for r in rows if r["n_words"] >= max(1, min_tokens)]

    def mean(key: str, of: list[dict]) -> float | None:
        return sum(r[key] for r in of) / len(of) if of else None

    return {
        "absorption_rate": mean("full_absorption", kept),
        "absorption_fraction": mean("absorption_fraction", kept),
        "first_letter_f1": mean("main_f1", kept),
        "first_letter_probe_f1": mean("probe_f1", common),
    }


def _f1(predicted: Tensor, positive: Tensor) -> Tensor:
    """F1 of a [n] bool prediction of a [n] bool label."""
    true_pos = (predicted & positive).sum().float()
    return 2 * true_pos / (predicted.sum() + positive.sum()).clamp_min(1)
