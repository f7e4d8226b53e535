"""Collection: round trip against a direct forward, resume after interruption, timings, bad input."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from saelib.batching import padded_batches
from saelib.collection import collect, massive_mask, store_from_tensor
from saelib.errors import BadArgument, BadFile
from saelib.store import open_store

TEXTS = [
    f"Sentence number {i} talks about {w} and what {w} does every day."
    for i, w in enumerate(["dogs", "cities", "rain", "music", "code", "bread", "law", "stars"] * 6)
]


class Forwards:
    """Stands in for `lm.forward_to`: counts the forwards and raises KeyboardInterrupt at `crash_at`."""

    def __init__(self, lm, monkeypatch):
        self.calls, self.crash_at, self.real = 0, None, lm.forward_to
        monkeypatch.setattr(lm, "forward_to", self)

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        return self.real(*args)


def without_seconds(manifest: dict) -> dict:
    return {
        **manifest,
        "shards": [{k: v for k, v in s.items() if k != "seconds"} for s in manifest["shards"]],
    }


def test_round_trip_matches_a_direct_forward(tmp_path, tiny_llama):
    store = collect(
        tiny_llama, TEXTS, tmp_path / "acts", layer=2, dtype="float32", shard_tokens=100, progress=False
    )
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
    for key in (
        "model",
        "layer",
        "site",
        "d_model",
        "dtype",
        "n_tokens",
        "shards",
        "format_version",
        "corpus_spec",
    ):
        assert key in manifest


def test_keep_first_token_and_half_precision(tmp_path, tiny_llama):
    store = collect(
        tiny_llama, TEXTS[:4], tmp_path, layer=1, drop_first_token=False, dtype="bfloat16", progress=False
    )
    direct = tiny_llama.activations(TEXTS[:4], layer=1)
    assert store.n_tokens == sum(len(a) for a in direct.acts)
    shard = load_file(str(tmp_path / store.manifest["shards"][0]["file"]))
    assert shard["acts"].dtype == torch.bfloat16
    assert next(store.shards()).pos[0].item() == 0


def test_interrupted_collection_resumes_to_identical_shards(tmp_path, tiny_llama, monkeypatch):
    kwargs = dict(layer=1, shard_tokens=80, progress=False)
    forwards = Forwards(tiny_llama, monkeypatch)
    collect(tiny_llama, TEXTS, tmp_path / "full", **kwargs)
    n_full = forwards.calls

    forwards.calls, forwards.crash_at = 0, 3
    with pytest.raises(KeyboardInterrupt):
        collect(tiny_llama, TEXTS, tmp_path / "resumed", **kwargs)
    with pytest.raises(BadFile, match="unfinished"):
        open_store(tmp_path / "resumed")
    before = json.loads((tmp_path / "resumed" / "manifest.json").read_text())["shards"]
    assert before

    forwards.calls, forwards.crash_at = 0, None
    resumed = collect(tiny_llama, TEXTS, tmp_path / "resumed", **kwargs)
    assert 0 < forwards.calls < n_full  # only the missing shards ran
    full_files = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert full_files == sorted(p.name for p in (tmp_path / "resumed").iterdir())
    for name in full_files:
        full, again = (tmp_path / "full" / name).read_bytes(), (tmp_path / "resumed" / name).read_bytes()
        if name == "manifest.json":  # equal but for the timings
            assert without_seconds(json.loads(full)) == without_seconds(json.loads(again))
        else:
            assert full == again, name
    # the shards written before the interruption keep the seconds they took then
    after = resumed.manifest["shards"]
    assert [s["seconds"] for s in after[: len(before)]] == [s["seconds"] for s in before]
    assert resumed.collect_seconds == pytest.approx(sum(s["seconds"] for s in after))


def test_collect_seconds_survive_a_rerun(tmp_path, tiny_llama, monkeypatch):
    store = collect(tiny_llama, TEXTS[:10], tmp_path, layer=1, shard_tokens=50, progress=False)
    assert all(s["seconds"] > 0 for s in store.manifest["shards"]) and store.collect_seconds > 0
    forwards = Forwards(tiny_llama, monkeypatch)
    again = collect(tiny_llama, TEXTS[:10], tmp_path, layer=1, shard_tokens=50, progress=False)
    assert forwards.calls == 0 and again.collect_seconds == store.collect_seconds


@pytest.mark.parametrize("bad,match", [([], "Empty corpus"), (["ok text", ""], "empty texts")])
def test_bad_corpus(tmp_path, tiny_llama, bad, match):
    with pytest.raises(BadArgument, match=match):
        collect(tiny_llama, bad, tmp_path, progress=False)


def test_bad_dtype_layer_and_site(tmp_path, tiny_llama):
    with pytest.raises(BadArgument, match="float16"):
        collect(tiny_llama, TEXTS[:2], tmp_path, dtype="int8", progress=False)
    with pytest.raises(BadArgument, match="out of range"):
        collect(tiny_llama, TEXTS[:2], tmp_path, layer=99, progress=False)
    with pytest.raises(BadArgument, match="Unknown site"):
        collect(tiny_llama, TEXTS[:2], tmp_path, site="embed", progress=False)


def test_collect_at_a_hook_name(tmp_path, tiny_llama):
    store = collect(tiny_llama, TEXTS[:2], tmp_path, layer="blocks.2.hook_resid_pre", progress=False)
    assert (store.layer, store.site) == (2, "resid_pre")
    direct = tiny_llama.activations(TEXTS[:2], layer=1)  # the input of block 2 is the output of block 1
    expected = torch.cat([a[1:] for a in direct.acts]).half()
    assert torch.equal(torch.cat([s.acts for s in store.shards()]), expected)


def test_no_word_is_lost(tmp_path, tiny_llama):
    """The tiny tokenizer adds no BOS: every word of every text, one-word texts too, gets a row."""
    texts = ["Dogs", "London is a major city.", *TEXTS[:5]]
    store = collect(tiny_llama, texts, tmp_path, layer=1, massive_ratio=None, progress=False)
    shard = next(store.shards())
    for doc, text in enumerate(texts):
        words = tiny_llama.tokenizer(text)["input_ids"]
        rows = shard.doc == doc
        assert shard.token_ids[rows].tolist() == words, text
        assert shard.pos[rows].tolist() == list(range(1, len(words) + 1))  # position 0 is the sink token
    assert store.sink_token == store.manifest["sink_token"] == "<|endoftext|>"


def test_a_store_of_the_old_format_is_refused(tmp_path, tiny_llama):
    collect(tiny_llama, TEXTS[:3], tmp_path, layer=1, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(BadFile, match="left out the first word.*collect again"):
        open_store(tmp_path)


def test_changed_settings_in_the_same_dir_are_refused(tmp_path, tiny_llama):
    collect(tiny_llama, TEXTS[:5], tmp_path, layer=1, progress=False)
    with pytest.raises(BadFile, match="different settings \\(layer\\)"):
        collect(tiny_llama, TEXTS[:5], tmp_path, layer=2, progress=False)


def test_nan_activations_are_refused(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setattr(
        tiny_llama,
        "forward_to",
        lambda ids, mask, layer, site: torch.full((*ids.shape, tiny_llama.d_model), float("nan")),
    )
    with pytest.raises(BadArgument, match="NaN.*float32"):
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
    kept = collect(
        tiny_llama, TEXTS[:6], tmp_path / "kept", layer=1, dtype="float32", massive_ratio=None, progress=False
    )
    n_dropped = sum(s["n_massive_dropped"] for s in store.manifest["shards"])
    assert kept.n_tokens - store.n_tokens == 6 == n_dropped
    shard = next(store.shards())
    norms = shard.acts.norm(dim=1)
    assert 1 not in shard.pos.tolist() and norms.max() < 10 * norms.median()
    ids, focus = store.context(shard.offset, before=0, after=0)
    assert ids == [tiny_llama.token_ids([TEXTS[0]])[0][2]] and focus == 0


def test_padded_batches_sort_by_length_and_mask_the_padding():
    input_ids = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]]
    batches = list(padded_batches(input_ids, range(4), batch_size=2, pad_id=0))
    assert [docs for docs, _, _ in batches] == [[1, 2], [0, 3]]
    _, ids, mask = batches[0]
    assert ids.tolist() == [[4, 0], [5, 6]] and mask.tolist() == [[1, 0], [1, 1]]


def test_massive_mask():
    norms = torch.tensor([1.0, 1.2, 0.9, 50.0])
    assert massive_mask(norms, 10.0).tolist() == [False, False, False, True]
    assert not massive_mask(norms, None).any()
    assert massive_mask(norms, 10.0, reference=torch.tensor([10.0])).tolist() == [False] * 4


def test_store_from_tensor_matches_its_input(tmp_path):
    acts = torch.randn(300, 4)
    store = store_from_tensor(acts, tmp_path, shard_tokens=128)
    assert [s["n_tokens"] for s in store.manifest["shards"]] == [128, 128, 44]
    assert torch.equal(torch.cat([s.acts for s in store.shards()]), acts)
    torch.testing.assert_close(store.mean, acts.mean(0))
    assert store.documents() == [f"synthetic document {i}" for i in range(5)]
    with pytest.raises(BadArgument, match="non-empty"):
        store_from_tensor(torch.zeros(0, 4), tmp_path / "empty")


def test_files_get_the_umasks_mode(tmp_path, tiny_llama):
    old = os.umask(0o027)
    try:
        store = collect(tiny_llama, TEXTS[:4], tmp_path, layer=1, progress=False)
    finally:
        os.umask(old)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert {"manifest.json", "documents.jsonl", store.manifest["shards"][0]["file"]} <= set(files)
    assert {name: oct((tmp_path / name).stat().st_mode & 0o777) for name in files} == dict.fromkeys(
        files, "0o640"
    )
