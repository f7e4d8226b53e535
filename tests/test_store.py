"""Activation store: round trip, resume after interruption, streaming batches, bad input."""
import json

import pytest
import torch
from safetensors.torch import load_file

import saelib.store as store_mod
from saelib.store import collect, open_store, store_from_tensor

TEXTS = [f"Sentence number {i} talks about {w} and what {w} does every day." for i, w in
         enumerate(["dogs", "cities", "rain", "music", "code", "bread", "law", "stars"] * 6)]


def test_round_trip_matches_a_direct_forward(tmp_path, tiny_llama):
    store = collect(tiny_llama, TEXTS, tmp_path / "acts", layer=2, dtype="float32", shard_tokens=100, progress=False)
    assert len(store.manifest["shards"]) > 2
    direct = tiny_llama.activations(TEXTS, layer=2)
    expected = torch.cat([a[1:] for a in direct.acts])  # first token dropped by default
    ids = torch.cat([t[1:] for t in direct.token_ids])
    shards = list(open_store(tmp_path / "acts").shards())
    torch.testing.assert_close(torch.cat([s.acts for s in shards]), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(torch.cat([s.token_ids for s in shards]), ids)
    assert store.n_tokens == len(expected)
    torch.testing.assert_close(store.mean, expected.mean(0), rtol=1e-4, atol=1e-5)
    assert store.mean_sq_norm == pytest.approx((expected.norm(dim=1) ** 2).mean().item(), rel=1e-4)
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    for key in ("model", "layer", "site", "d_model", "dtype", "n_tokens", "shards", "format_version", "corpus_spec"):
        assert key in manifest


def test_keep_first_token_and_half_precision(tmp_path, tiny_llama):
    store = collect(tiny_llama, TEXTS[:4], tmp_path, layer=1, drop_first_token=False, dtype="bfloat16", progress=False)
    direct = tiny_llama.activations(TEXTS[:4], layer=1)
    assert store.n_tokens == sum(len(a) for a in direct.acts)
    shard = load_file(str(tmp_path / store.manifest["shards"][0]["file"]))
    assert shard["acts"].dtype == torch.bfloat16
    assert next(store.shards()).pos[0].item() == 0


def test_interrupted_collection_resumes_to_an_identical_store(tmp_path, tiny_llama, monkeypatch):
    kwargs = dict(layer=1, shard_tokens=80, progress=False)
    collect(tiny_llama, TEXTS, tmp_path / "full", **kwargs)

    real_run_shard, calls = store_mod._run_shard, []

    def crash_on_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_shard(*args, **kw)

    monkeypatch.setattr(store_mod, "_run_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        collect(tiny_llama, TEXTS, tmp_path / "resumed", **kwargs)
    with pytest.raises(ValueError, match="unfinished"):
        open_store(tmp_path / "resumed")
    monkeypatch.setattr(store_mod, "_run_shard", real_run_shard)
    resumed = collect(tiny_llama, TEXTS, tmp_path / "resumed", **kwargs)
    assert resumed.collected_tokens < resumed.n_tokens  # only the missing shards ran
    full_files = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert full_files == sorted(p.name for p in (tmp_path / "resumed").iterdir())
    for name in full_files:
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_batches_cover_the_split_once_and_are_deterministic(tmp_path):
    acts = torch.randn(2000, 8)
    store = store_from_tensor(acts, tmp_path, shard_tokens=128)
    batches = list(store.iter_batches(64, seed=3, split=None))
    got = torch.cat(batches)
    assert got.shape == acts.shape
    assert torch.equal(got[got[:, 0].argsort()], acts[acts[:, 0].argsort()])
    assert torch.equal(torch.cat(list(store.iter_batches(64, seed=3, split=None))), got)
    assert not torch.equal(torch.cat(list(store.iter_batches(64, seed=4, split=None))), got)
    skipped = list(store.iter_batches(64, seed=3, split=None, skip_batches=5))
    assert torch.equal(torch.cat(skipped), torch.cat(batches[5:]))
    n_train = sum(len(b) for b in store.iter_batches(64, split="train"))
    n_eval = sum(len(b) for b in store.iter_batches(64, split="eval"))
    assert n_train + n_eval == 2000 and n_eval > 0
    assert (store.count_tokens("train"), store.count_tokens("eval"), store.count_tokens(None)) == (n_train, n_eval, 2000)


def test_documents_and_context(tmp_path, tiny_llama):
    store = collect(tiny_llama, TEXTS, tmp_path, layer=1, shard_tokens=100, progress=False)
    assert store.documents() == TEXTS
    assert len(store.documents("eval")) == len(TEXTS) // 20
    shard = list(store.shards())[1]
    row = shard.offset + 3
    ids, focus = store.context(row, before=2, after=1)
    assert ids[focus] == shard.token_ids[3].item()
    doc_ids = tiny_llama.tokenizer(TEXTS[shard.doc[3].item()])["input_ids"]
    assert ids == doc_ids[shard.pos[3].item() - len(ids[:focus]): shard.pos[3].item() + len(ids) - focus]


@pytest.mark.parametrize("bad,match", [([], "Empty corpus"), (["ok text", ""], "empty texts")])
def test_bad_corpus(tmp_path, tiny_llama, bad, match):
    with pytest.raises(ValueError, match=match):
        collect(tiny_llama, bad, tmp_path, progress=False)


def test_changed_settings_in_the_same_dir_are_refused(tmp_path, tiny_llama):
    collect(tiny_llama, TEXTS[:5], tmp_path, layer=1, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        collect(tiny_llama, TEXTS[:5], tmp_path, layer=2, progress=False)


def test_corrupt_and_missing_files_are_named(tmp_path):
    store = store_from_tensor(torch.randn(300, 4), tmp_path, shard_tokens=100)
    shard_file = tmp_path / store.manifest["shards"][1]["file"]
    shard_file.write_bytes(shard_file.read_bytes()[:50])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        list(open_store(tmp_path).shards())
    shard_file.unlink()
    with pytest.raises(ValueError, match="missing"):
        open_store(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        open_store(tmp_path)
    with pytest.raises(ValueError, match="saelib.collect"):
        open_store(tmp_path / "nowhere")


def test_nan_activations_are_refused(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setattr(tiny_llama, "forward_to", lambda ids, mask, layer, site: torch.full(
        (*ids.shape, tiny_llama.d_model), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        collect(tiny_llama, TEXTS[:3], tmp_path, progress=False)
    assert not list(tmp_path.glob("shard-*"))


def test_massive_activations_are_left_out_and_counted(tmp_path, tiny_llama, monkeypatch):
    real_forward = tiny_llama.forward_to

    def with_a_second_sink(ids, mask, layer, site):
        acts = real_forward(ids, mask, layer, site).clone()
        acts[:, 1] *= 1000.0  # position 1 becomes an attention sink, as in some real texts
        return acts

    monkeypatch.setattr(tiny_llama, "forward_to", with_a_second_sink)
    store = collect(tiny_llama, TEXTS[:6], tmp_path / "dropped", layer=1, dtype="float32", progress=False)
    kept = collect(tiny_llama, TEXTS[:6], tmp_path / "kept", layer=1, dtype="float32", massive_ratio=None,
                   progress=False)
    assert kept.n_tokens - store.n_tokens == 6 == sum(s["n_massive_dropped"] for s in store.manifest["shards"])
    shard = next(store.shards())
    assert 1 not in shard.pos.tolist() and shard.acts.norm(dim=1).max() < 10 * shard.acts.norm(dim=1).median()
    ids, focus = store.context(shard.offset, before=0, after=0)
    assert ids == [tiny_llama.tokenizer(TEXTS[0])["input_ids"][2]] and focus == 0
