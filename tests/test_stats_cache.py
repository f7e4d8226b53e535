"""feature_stats saved next to the SAE: reused while SAE, store and settings match, never when stale."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_sae

from saelib import analysis
from saelib.analysis import stats as stats_module
from saelib.collection import store_from_tensor
from saelib.sae import load_sae


@pytest.fixture
def store(tmp_path):
    acts = torch.randn(600, 12, generator=torch.Generator().manual_seed(3)) * 2
    return store_from_tensor(acts, tmp_path / "store", shard_tokens=256)


@pytest.fixture
def saved_sae(tmp_path):
    sae = random_sae("relu", b_enc=-1.0)
    sae.save(tmp_path / "sae")
    return load_sae(tmp_path / "sae", device="cpu")


@pytest.fixture
def passes(monkeypatch):
    """Counts the passes over the store."""
    calls = []
    compute = stats_module._compute
    monkeypatch.setattr(stats_module, "_compute", lambda *args: calls.append(args) or compute(*args))
    return calls


def same(a, b) -> bool:
    return a.n_tokens == b.n_tokens and all(
        torch.equal(getattr(a, n), getattr(b, n)) for n in vars(a) if n != "n_tokens"
    )


def test_second_call_reads_the_file_next_to_the_sae(saved_sae, store, passes, tmp_path):
    first = analysis.feature_stats(saved_sae, store, progress=False)
    assert (tmp_path / "sae" / "feature_stats.safetensors").exists()
    info = json.loads((tmp_path / "sae" / "feature_stats.json").read_text())
    assert info["n_top"] == 20 and info["n_tokens"] == 600
    again = analysis.feature_stats(load_sae(tmp_path / "sae", device="cpu"), store, progress=False)
    assert len(passes) == 1 and same(first, again)
    fewer = analysis.feature_stats(saved_sae, store, n_top=5, progress=False)  # the dashboard's n_contexts
    fresh = analysis.feature_stats(saved_sae, store, n_top=5, progress=False, cache=False)
    assert len(passes) == 2 and same(fewer, fresh)


def test_stale_statistics_are_never_used(saved_sae, store, passes, tmp_path):
    analysis.feature_stats(saved_sae, store, progress=False)
    analysis.feature_stats(saved_sae, store, n_top=30, progress=False)  # more top rows than cached
    analysis.feature_stats(saved_sae, store, max_tokens=300, progress=False)
    other_store = store_from_tensor(torch.randn(500, 12), tmp_path / "other")
    analysis.feature_stats(saved_sae, other_store, progress=False)
    with torch.no_grad():
        saved_sae.b_enc.add_(0.5)  # edited in memory: new weights, new statistics
    edited = analysis.feature_stats(saved_sae, other_store, progress=False)
    assert len(passes) == 5
    assert same(edited, analysis.feature_stats(saved_sae, other_store, progress=False, cache=False))


def test_a_tensors_file_the_json_does_not_vouch_for_is_recomputed(saved_sae, store, passes, tmp_path):
    first = analysis.feature_stats(saved_sae, store, progress=False)
    tensors = tmp_path / "sae" / "feature_stats.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-8] + bytes(8))
    assert same(analysis.feature_stats(saved_sae, store, progress=False), first) and len(passes) == 2


def test_no_file_without_a_folder_or_with_cache_off(saved_sae, store, tmp_path):
    analysis.feature_stats(saved_sae, store, progress=False, cache=False)
    analysis.feature_stats(random_sae("relu", b_enc=-1.0), store, progress=False)  # built in memory
    assert not (tmp_path / "sae" / "feature_stats.json").exists()
