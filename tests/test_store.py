"""Store reader: streaming batches, splits, documents and contexts, damaged folders named."""

import pytest
import torch

from saelib.collection import collect, store_from_tensor
from saelib.errors import BadArgument, BadFile
from saelib.store import ActivationStore, open_store

TEXTS = [
    f"Sentence number {i} talks about {w} and what {w} does." for i, w in enumerate(["dogs", "rain"] * 20)
]


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
    counts = (store.count_tokens("train"), store.count_tokens("eval"), store.count_tokens(None))
    assert counts == (n_train, n_eval, 2000)


def test_unshuffled_batches_keep_the_stored_order(tmp_path):
    acts = torch.randn(500, 3)
    store = store_from_tensor(acts, tmp_path, shard_tokens=100)
    assert torch.equal(torch.cat(list(store.iter_batches(64, shuffle=False, split=None))), acts)


def test_split_mask_holds_out_every_20th_document():
    doc = torch.arange(40)
    assert ActivationStore.split_mask(doc, "eval").nonzero().squeeze(1).tolist() == [19, 39]
    assert ActivationStore.split_mask(doc, "train").sum() == 38
    assert ActivationStore.split_mask(doc, None).all()
    with pytest.raises(BadArgument, match="'train', 'eval' or None"):
        ActivationStore.split_mask(doc, "test")


def test_documents_and_context(tmp_path, tiny_llama):
    store = collect(tiny_llama, TEXTS, tmp_path, layer=1, shard_tokens=100, progress=False)
    assert store.documents() == TEXTS
    assert store.documents("eval") == [TEXTS[19], TEXTS[39]]
    shard = list(store.shards())[1]
    row = shard.offset + 3
    ids, focus = store.context(row, before=2, after=1)
    assert ids[focus] == shard.token_ids[3].item()
    doc_ids = tiny_llama.token_ids([TEXTS[shard.doc[3].item()]])[0]
    pos = shard.pos[3].item()
    assert ids == doc_ids[pos - focus : pos + len(ids) - focus]
    with pytest.raises(BadArgument, match="out of range"):
        store.context(store.n_tokens)
    assert "layer 1 resid" in repr(store) and len(store) == store.n_tokens


def test_open_store_accepts_a_run_dir(tmp_path):
    store_from_tensor(torch.randn(100, 4), tmp_path / "activations")
    assert open_store(tmp_path).path == tmp_path / "activations"


def test_bad_batch_size(tmp_path):
    store = store_from_tensor(torch.randn(100, 4), tmp_path)
    with pytest.raises(BadArgument, match="batch_size"):
        next(store.iter_batches(0))


def test_corrupt_and_missing_files_are_named(tmp_path):
    store = store_from_tensor(torch.randn(300, 4), tmp_path, shard_tokens=100)
    shard_file = tmp_path / store.manifest["shards"][1]["file"]
    shard_file.write_bytes(shard_file.read_bytes()[:50])
    with pytest.raises(BadFile, match="corrupt or truncated.*collect again"):
        list(open_store(tmp_path).shards())
    shard_file.unlink()
    with pytest.raises(BadFile, match="missing"):
        open_store(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BadFile, match="corrupt"):
        open_store(tmp_path)
    with pytest.raises(BadFile, match="saelib.collect"):
        open_store(tmp_path / "nowhere")


def test_a_shard_of_the_wrong_shape_is_named(tmp_path):
    store = store_from_tensor(torch.randn(200, 4), tmp_path, shard_tokens=100)
    other = store_from_tensor(torch.randn(100, 4), tmp_path / "other", shard_tokens=50)
    (tmp_path / store.manifest["shards"][0]["file"]).write_bytes(
        (tmp_path / "other" / other.manifest["shards"][0]["file"]).read_bytes()
    )
    with pytest.raises(BadFile, match=r"has shape \(50, 4\), expected \(100, 4\)"):
        store.load_shard(0)


def test_a_corrupt_documents_line_is_named(tmp_path):
    store = store_from_tensor(torch.randn(200, 4), tmp_path)
    lines = (tmp_path / "documents.jsonl").read_text().splitlines()
    lines[2] = "{broken"
    (tmp_path / "documents.jsonl").write_text("\n".join(lines))
    with pytest.raises(BadFile, match="documents.jsonl:3 is not valid JSON"):
        store.documents()
