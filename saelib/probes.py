"""The LM's side of the probing evaluations, computed once: activations of the concept texts and of the
vocabulary's words (`saelib.evals`), kept together as `ProbeData`, cached in a run folder so that
03_analyze reuses what 02_train computed, and scored for any number of SAEs by `probing_metrics`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from saelib.atomic import write_bytes
from saelib.corpus import load_concepts
from saelib.evals import (
    LETTER_PROMPT,
    ConceptActivations,
    LetterActivations,
    absorption,
    concept_activations,
    concept_sparse_probing,
    letter_activations,
)
from saelib.sae import SAE

PROBE_CACHE_FILE = "probe_data.safetensors"


@dataclass
class ProbeData:
    """What the evaluations read from the LM, computed once for any number of SAEs."""

    concepts: ConceptActivations
    letters: LetterActivations


def probe_data(lm, layer: int, site: str, cache_dir: str | os.PathLike | None = None) -> ProbeData:
    """The LM's activations for the probing evaluations and concept labels at (layer, site).

    With `cache_dir` they are saved there (`probe_data.safetensors`) and read back while the model,
    layer, site, precision, sink token and concept texts stay the same, so 03_analyze reuses what
    02_train computed; anything else (or an unreadable file) computes them again.
    """
    docs = load_concepts("train") + load_concepts("heldout")
    texts_digest = hashlib.sha256(json.dumps([[d.text, d.concept] for d in docs]).encode()).hexdigest()
    key = {
        "version": 1,
        "model": lm.name,
        "layer": layer,
        "site": site,
        "precision": lm.precision,
        "sink_token": lm.sink_token,
        "concept_texts": texts_digest,
        "letter_prompt": LETTER_PROMPT,
    }
    path = None if cache_dir is None else Path(cache_dir) / PROBE_CACHE_FILE
    if path is not None and path.exists():
        cached = _read_probe_data(path, key)
        if cached is not None:
            return cached
    data = ProbeData(concept_activations(lm, layer, site), letter_activations(lm, layer, site))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_probe_data(path, key, data)
    return data


def _write_probe_data(path: Path, key: dict, data: ProbeData) -> None:
    concepts, letters = data.concepts, data.letters
    tensors = {
        "concept_acts": torch.cat(concepts.acts),
        "concept_lengths": torch.tensor([len(acts) for acts in concepts.acts]),
        "concept_is_train": concepts.is_train,
        "letter_acts": letters.acts,
        "letters": letters.letters,
        "letter_is_train": letters.is_train,
        "probe_weight": letters.probe_weight,
        "probe_bias": letters.probe_bias,
    }
    names = {"concepts": concepts.concepts, "tokens": letters.tokens}
    metadata = {"key": json.dumps(key), "names": json.dumps(names)}  # one file: tensors and what they are
    write_bytes(path, save({name: t.contiguous() for name, t in tensors.items()}, metadata))


def _read_probe_data(path: Path, key: dict) -> ProbeData | None:
    """The cached ProbeData if `path` holds it for `key`, else None."""
    try:
        with safe_open(str(path), framework="pt") as cache:
            metadata = cache.metadata() or {}
            if json.loads(metadata.get("key", "null")) != key:
                return None
            tensors = {name: cache.get_tensor(name) for name in cache.keys()}  # noqa: SIM118 (not a dict)
        names = json.loads(metadata["names"])
        concepts = ConceptActivations(
            list(tensors["concept_acts"].split(tensors["concept_lengths"].tolist())),
            names["concepts"],
            tensors["concept_is_train"],
        )
        letters = LetterActivations(
            tensors["letter_acts"],
            tensors["letters"],
            names["tokens"],
            tensors["letter_is_train"],
            tensors["probe_weight"],
            tensors["probe_bias"],
        )
    except (SafetensorError, OSError, KeyError, ValueError):  # damaged: computed again and rewritten
        return None
    return ProbeData(concepts, letters)


def probing_metrics(sae: SAE, probes: ProbeData, min_tokens: int = 10) -> dict[str, float | None]:
    """k-sparse probing and first-letter absorption of one SAE on precomputed LM activations."""
    return {**concept_sparse_probing(sae, probes.concepts), **absorption(sae, probes.letters, min_tokens)}
