"""Feature statistics saved next to the SAE, so a later session (03_analyze, the Explorer's density
ranking, the dashboard, `python -m saelib report`) skips the pass over the store.

feature_stats.safetensors holds the tensors; feature_stats.json holds what they were computed from: the
sha256 of the SAE's weights and of the store's manifest, the settings, and the sha256 of the tensors file
itself. A pair whose key differs in anything, or whose tensors file is not the one the JSON names, is
never used; the next computation overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load
from torch import Tensor

from saelib.atomic import save_tensors, write_json

TENSORS_FILE, KEY_FILE = "feature_stats.safetensors", "feature_stats.json"


def sae_fingerprint(sae) -> str:
    """sha256 of the SAE's config and weights as they are now (an edited SAE gets new statistics)."""
    digest = hashlib.sha256(repr(sae.cfg).encode())
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def store_fingerprint(store) -> str:
    """sha256 of the store's manifest: its settings, shards and their sums."""
    return hashlib.sha256(json.dumps(store.manifest, sort_keys=True).encode()).hexdigest()


def read(folder: Path, key: dict) -> tuple[dict[str, Tensor], dict] | None:
    """The cached tensors and the JSON beside them if both were written for `key`, else None."""
    try:
        info = json.loads((folder / KEY_FILE).read_text())
        data = (folder / TENSORS_FILE).read_bytes()
    except (OSError, ValueError):  # no cache yet, or a damaged one: compute afresh
        return None
    if info.get("key") != key or info.get("tensors_sha256") != hashlib.sha256(data).hexdigest():
        return None
    try:
        return load(data), info
    except SafetensorError:
        return None


def write(folder: Path, key: dict, tensors: dict[str, Tensor], info: dict) -> None:
    """Tensors first, then the JSON that vouches for them; a folder we cannot write to only warns."""
    try:
        save_tensors({name: t.contiguous() for name, t in tensors.items()}, folder / TENSORS_FILE)
        data_sha = hashlib.sha256((folder / TENSORS_FILE).read_bytes()).hexdigest()
        write_json(folder / KEY_FILE, {"key": key, **info, "tensors_sha256": data_sha})
    except OSError as err:
        warnings.warn(
            f"Feature statistics not cached in {folder} ({err}); they are computed again next time",
            stacklevel=3,
        )
