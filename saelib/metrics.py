"""How good is an SAE: reconstruction on held-out activations, and what splicing it into the LM costs.

Reconstruction (streamed over the store's eval split): MSE, FVU = sum of squared errors / sum of
squared deviations from the mean, L0, dead and dense latent fractions, per-latent firing density.

Downstream (on held-out texts): next-token cross-entropy of the clean model, with the SAE's
reconstruction replacing the activation at (layer, site), and with that activation zeroed;
KL(clean || spliced) and CE-loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean).

Beyond reconstruction (with the LM, `saelib.evals`): k-sparse probing accuracy on the concept probes and
the first-letter absorption rate.
Position 0 holds the sink token saelib puts before every text (`lm.sink_token`), which the SAE never
trained on: it keeps its original activation in both interventions, and its prediction (of the first
word, the same in all three runs) is left out of every average.

Precision: the reconstruction metrics run the SAE in float32 on the stored activations with float64
sums, whatever precision trained it. The downstream metrics run the LM at its own precision (recorded
as `lm_precision`); all three CE figures come from that same model, so CE-loss recovered compares like
with like. In bfloat16 the LM's CE figures move by about a percent; the SAE runs in float32 inside it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from saelib.atomic import write_json
from saelib.batching import padded_batches
from saelib.distributed import to_device
from saelib.errors import BadArgument
from saelib.lm import LM
from saelib.probes import ProbeData, probe_data, probing_metrics
from saelib.sae import SAE
from saelib.store import ActivationStore

DENSE_FRACTION = 0.1  # a latent firing on more than 10% of tokens counts as dense


@torch.no_grad()
def reconstruction_metrics(
    sae: SAE, store: ActivationStore, batch_size: int = 4096, progress: bool = True
) -> dict:
    """Errors and L0 on the held-out eval split; firing density (dead, dense) over every stored token.

    The eval split is ~5% of the store: a rare latent can miss it entirely, so "dead" means never
    firing on any stored token. All sums are float64 so small errors do not vanish.
    """
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    if store.d_model != d_in:
        raise BadArgument(
            f"The SAE reads d_in={d_in} but the store holds d_model={store.d_model}; "
            "evaluate it on activations from the model and layer it was trained on"
        )
    device = sae.W_dec.device
    n, n_all = 0, 0
    sum_x = torch.zeros(d_in, dtype=torch.float64, device=device)
    sum_sq_x, sse, active = (torch.zeros((), dtype=torch.float64, device=device) for _ in range(3))
    fire_counts = torch.zeros(d_sae, dtype=torch.float64, device=device)
    bar = tqdm(total=store.n_tokens, desc="eval", unit="tok", disable=not progress)
    for shard in store.shards():
        is_eval = store.split_mask(shard.doc, "eval").to(device)
        shard_acts = to_device(shard.acts, device)
        for start in range(0, len(shard_acts), batch_size):
            acts, eval_rows = shard_acts[start : start + batch_size], is_eval[start : start + batch_size]
            pre = sae.pre_acts(acts)
            fire_counts += sae.firing_counts(pre)  # every row; latents only for the eval rows
            n_all += len(acts)
            bar.update(len(acts))
            if not eval_rows.any():
                continue
            acts, latents = acts[eval_rows], sae.activate(pre[eval_rows])
            recon = sae.decode(latents, acts)
            n += len(acts)
            sum_x += acts.double().sum(0)
            sum_sq_x += acts.double().pow(2).sum()
            sse += (recon - acts).double().pow(2).sum()
            active += (latents > 0).sum()
    bar.close()
    if n == 0:
        raise BadArgument(
            f"The store at {store.path} has no eval tokens (every 20th document is held out); "
            "collect at least 20 documents"
        )
    total_var = sum_sq_x - sum_x.pow(2).sum() / n
    density = (fire_counts / n_all).cpu()
    return {
        "n_eval_tokens": n,
        "n_density_tokens": n_all,
        "mse": (sse / (n * d_in)).item(),
        "fvu": (sse / total_var).item(),
        "l0": (active / n).item(),
        "dead_frac": (density == 0).double().mean().item(),
        "dense_frac": (density > DENSE_FRACTION).double().mean().item(),
        "feature_density": density.tolist(),
    }


def log10_density(metrics: dict) -> tuple[list[float], int]:
    """log10 firing frequency of each latent that fired on the eval split, and how many never fired."""
    density = [d for d in metrics["feature_density"] if d > 0]
    return [math.log10(d) for d in density], len(metrics["feature_density"]) - len(density)


def downstream_metrics(
    sae: SAE,
    lm: LM,
    texts: list[str],
    layer: int,
    site: str,
    batch_size: int = 16,
    max_length: int = 128,
    progress: bool = True,
) -> dict:
    """CE clean / with the SAE spliced in / zero-ablated, KL(clean || spliced), CE-loss recovered."""
    return shared_downstream_metrics([sae], lm, texts, layer, site, batch_size, max_length, progress)[0]


@torch.no_grad()
def shared_downstream_metrics(
    saes: Sequence[SAE],
    lm: LM,
    texts: list[str],
    layer: int,
    site: str,
    batch_size: int = 16,
    max_length: int = 128,
    progress: bool = True,
) -> list[dict]:
    """`downstream_metrics` of several SAEs on the same texts: the clean and zero-ablated runs (and the
    clean distribution KL needs) are computed once per batch and shared, so n SAEs cost n + 2 forward
    passes instead of 3n, and all but the first start at the hooked layer. Texts are batched by length."""
    if not texts:
        raise BadArgument("Pass at least one held-out text for the downstream metrics")
    for sae in saes:
        if lm.d_model != sae.cfg.d_in:
            raise BadArgument(f"The SAE reads d_in={sae.cfg.d_in} but {lm.name} has d_model={lm.d_model}")

    def splice(sae: SAE):
        def fn(acts: Tensor) -> Tensor:  # acts sit on their block's device, maybe not the SAE's
            out = acts.clone()
            out[:, 1:] = sae(acts[:, 1:].to(sae.W_dec.device, torch.float32)).to(acts.device, acts.dtype)
            return out

        return fn

    def zero(acts: Tensor) -> Tensor:
        out = torch.zeros_like(acts)
        out[:, 0] = acts[:, 0]
        return out

    shared = {"ce_clean": 0.0, "ce_zero": 0.0}
    per_sae = [{"ce_sae": 0.0, "kl_sae": 0.0} for _ in saes]
    n_predictions = 0
    token_ids = lm.token_ids(texts, max_length)
    batches = padded_batches(token_ids, range(len(texts)), batch_size, lm.tokenizer.pad_token_id)
    bar = tqdm(total=len(texts), desc="downstream", unit="text", disable=not progress)
    for docs, ids, mask in batches:
        bar.update(len(docs))
        # predictions made at positions 1..T-2 (words); position 0 is the sink token
        valid = (mask[:, 1:-1] * mask[:, 2:]).bool()
        if not valid.any():
            continue
        targets = ids[:, 2:][valid].to(lm.device)
        valid = valid.to(lm.device)
        # the blocks before the hooked layer run once for the clean, zeroed and every spliced pass
        passes = lm.intervened_logits(
            ids.to(lm.device), mask.to(lm.device), layer, site, [None, zero, *map(splice, saes)]
        )
        clean = _word_log_probs(next(passes), valid)
        shared["ce_clean"] += F.nll_loss(clean, targets, reduction="sum").item()
        shared["ce_zero"] += F.nll_loss(_word_log_probs(next(passes), valid), targets, reduction="sum").item()
        for sums, logits in zip(per_sae, passes, strict=True):
            spliced = _word_log_probs(logits, valid)
            sums["ce_sae"] += F.nll_loss(spliced, targets, reduction="sum").item()
            sums["kl_sae"] += F.kl_div(spliced, clean, log_target=True, reduction="sum").item()
        n_predictions += len(targets)
    bar.close()
    if n_predictions == 0:
        raise BadArgument("The texts are too short: each needs at least 3 tokens")
    results = []
    for sums in per_sae:
        out = {key: value / n_predictions for key, value in {**shared, **sums}.items()}
        gap = out["ce_zero"] - out["ce_clean"]
        # None when zero-ablation does not hurt (a random LM): there is nothing to recover
        out["ce_loss_recovered"] = (out["ce_zero"] - out["ce_sae"]) / gap if gap > 0 else None
        out["n_predictions"] = n_predictions
        results.append(out)
    return results


def _word_log_probs(logits: Tensor, valid: Tensor) -> Tensor:
    """Log-probabilities of the next token at the valid word positions 1..T-2."""
    return logits[:, 1:-1][valid].log_softmax(-1)


def evaluate(
    sae: SAE,
    store: ActivationStore,
    lm: LM | None = None,
    texts: list[str] | None = None,
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
    probing: bool = True,
    probes: ProbeData | None = None,
) -> dict:
    """Reconstruction metrics on the store's eval split, plus downstream metrics if `lm` is given, and
    with `probing` k-sparse probing and absorption (on `probes`, the LM's activations from
    `saelib.probes.probe_data`, computed here when None).

    `texts` defaults to the store's eval documents. Writes run_dir/metrics.json when run_dir is given.
    """
    metrics = evaluate_many([sae], store, lm, texts, progress, probing, probes)[0]
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics


def evaluate_many(
    saes: Sequence[SAE],
    store: ActivationStore,
    lm: LM | None = None,
    texts: list[str] | None = None,
    progress: bool = True,
    probing: bool = True,
    probes: ProbeData | None = None,
) -> list[dict]:
    """`evaluate` of several SAEs trained on `store`, sharing the LM's work: one clean and one
    zero-ablated pass over the texts for all of them, and one `probe_data`."""
    results = [
        {
            "arch": sae.cfg.arch,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            **reconstruction_metrics(sae, store, progress=progress),
        }
        for sae in saes
    ]
    if lm is None or not saes:
        return results
    texts = store.documents("eval") if texts is None else texts
    downstream = shared_downstream_metrics(saes, lm, texts, store.layer, store.site, progress=progress)
    if probing and probes is None:
        probes = probe_data(lm, store.layer, store.site)
    for sae, metrics, spliced in zip(saes, results, downstream):
        metrics["lm_precision"] = lm.precision
        metrics.update(spliced)
        if probing:
            metrics.update(probing_metrics(sae, probes))
    return results
