"""Devices and processes: device names are checked with a fix in the message; torchrun runs of collect and
train on two CPU processes (gloo, one thread each) give the single-process results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TRAINING_TEXT

from saelib import distributed
from saelib.collection import collect
from saelib.corpus import load_corpus
from saelib.errors import BadArgument
from saelib.lm import load_lm
from saelib.sae import load_sae
from saelib.training import train


def test_auto_is_cpu_without_a_gpu_and_cuda_with_one(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    expected = torch.device("cuda", 1 % torch.cuda.device_count()) if torch.cuda.is_available() else "cpu"
    assert distributed.resolve_device("auto") == torch.device(expected)
    assert distributed.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "name, message", [("gpu", "Unknown device"), ("cuda:99", "cuda"), ("xla", "not supported")]
)
def test_bad_device_names_the_fix(name, message):
    if name == "cuda:99" and not torch.cuda.is_available():
        message = "no CUDA GPU"
    with pytest.raises(BadArgument, match=message):
        distributed.resolve_device(name)


def test_a_single_process_is_rank_0_of_1(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    distributed.init()  # no torchrun: nothing to join
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert list(distributed.block(5)) == [0, 1, 2, 3, 4]
    assert torch.equal(distributed.all_reduce(torch.ones(3)), torch.ones(3))


@pytest.mark.parametrize("n_items, world", [(5, 2), (7, 3), (2, 4)])
def test_blocks_are_contiguous_disjoint_and_cover_everything(monkeypatch, n_items, world):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    blocks = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        blocks.append(list(distributed.block(n_items)))
    assert sum(blocks, []) == list(range(n_items))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


# ---- two processes through torchrun (gloo, one thread each) ---------------------------------------

COLLECT = dict(layer=1, max_tokens_per_text=64, batch_size=32, shard_tokens=200)
# float32 matmuls: in bfloat16 the pre-activations tie so often at the BatchTopK cut-off that which of
# the tied entries one process keeps is arbitrary, and the comparison would measure that choice
TRAIN = dict(k=4, expansion=2, batch_size=64, device="cpu", precision="float32", progress=False)
ARCHS = ("topk", "batchtopk", "relu", "jumprelu")
DDP_SCRIPT = """
import json, sys, torch
from saelib import distributed
from saelib.losses import global_batch_top_indices
from saelib.store import open_store
from saelib.training import train
store, run_dir = open_store(sys.argv[1]), sys.argv[2]
distributed.init()
# the global top 4 of [3, 1, 2, 2 | 2, 2, 0, 5] is 5, 3 and two of the four 2s (a repeated context)
values = torch.tensor([[3.0, 1.0, 2.0, 2.0], [2.0, 2.0, 0.0, 5.0]])[distributed.rank()]
picked = global_batch_top_indices(values, 2).tolist()
open(f"{{run_dir}}/picked-{{distributed.rank()}}.json", "w").write(json.dumps(picked))
for arch in {archs}:
    train(store, f"{{run_dir}}/{{arch}}", arch=arch, n_tokens=320, **{train})
train(store, f"{{run_dir}}/resumed", arch="topk", n_tokens=640, checkpoint_every=3, **{train})
"""


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone` (a free port, so parallel test runs do not collide) with 2 processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_gpt2):
    """A tiny model folder, a corpus file and the store one process collects from them."""
    folder = tmp_path_factory.mktemp("one-process")
    tiny_gpt2.model.save_pretrained(folder / "model")
    tiny_gpt2.tokenizer.save_pretrained(folder / "model")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(f"{text} Take {i}." for i in range(6) for text in TRAINING_TEXT))
    spec = {"spec": str(corpus), "n_texts": None, "seed": 0}
    lm = load_lm(str(folder / "model"), device="cpu")
    store = collect(
        lm, load_corpus(str(corpus)), folder / "activations", corpus_spec=spec, progress=False, **COLLECT
    )
    return folder, store


def test_torchrun_collect_resumes_each_block_and_matches_one_process(tmp_path, one_process):
    """An interrupted collection (a 1-process run's first shards, a 2-process run's first shards of rank
    1's block) finished by torchrun: kept shards untouched, every shard byte-identical to one process's."""
    source, reference = one_process
    out = tmp_path / "activations"
    shutil.copytree(reference.path, out)
    entries = reference.manifest["shards"]
    rank1 = range(len(entries) // 2, len(entries))  # distributed.block for rank 1 of 2
    kept = [0, 1, 2, rank1[0], rank1[1]]
    for i, entry in enumerate(entries):
        if i not in kept:
            (out / entry["file"]).unlink()
    settings = {
        key: value
        for key, value in reference.manifest.items()
        if key not in ("shards", "n_tokens", "mean", "mean_norm", "mean_sq_norm")
    }
    (out / "manifest.json").write_text(json.dumps({**settings, "complete": False, "shards": entries[:3]}))
    rank_manifest = {**settings, "complete": False, "shards": entries[rank1[0] : rank1[1] + 1]}
    (out / "manifest.rank-1.json").write_text(json.dumps(rank_manifest))
    kept_mtimes = [(out / entries[i]["file"]).stat().st_mtime_ns for i in kept]

    args = ["--model", str(source / "model"), "--corpus", str(source / "corpus.txt"), "--layer", "1"]
    args += ["--max-tokens-per-text", "64", "--batch-size", "32", "--shard-tokens", "200"]
    result = torchrun("-m", "saelib", "collect", "--run-dir", str(tmp_path), *args)
    assert result.stdout.count("ActivationStore(") == 1  # rank 0 prints, rank 1 stays quiet

    assert [(out / entries[i]["file"]).stat().st_mtime_ns for i in kept] == kept_mtimes
    for entry in entries:
        assert (out / entry["file"]).read_bytes() == (reference.path / entry["file"]).read_bytes()
    merged = json.loads((out / "manifest.json").read_text())
    assert not list(out.glob("manifest.rank-*.json"))

    def untimed(manifest):
        return {**manifest, "shards": [{**e, "seconds": 0} for e in manifest["shards"]]}

    assert untimed(merged) == untimed(reference.manifest)


class Interrupted(Exception):
    pass


def assert_equal_but_adam_noise(ours: torch.Tensor, reference: torch.Tensor, lr: float, *names) -> None:
    """Equal to float32 rounding, except that Adam turns a gradient that is zero up to rounding into a
    step of up to lr: a few elements in a thousand may differ by less than lr."""
    off = ~torch.isclose(ours, reference, rtol=1e-5, atol=1e-5)
    assert off.float().mean() <= 1e-3, (*names, f"{int(off.sum())} of {off.numel()} elements differ")
    assert (ours - reference).abs().max() < lr, names


def test_torchrun_training_matches_one_process_and_resumes_exactly(tmp_path, one_process):
    """Same global batch: every arch's SAE after 5 DDP steps equals one process's to float32 rounding;
    a DDP run resumed from a 1-process checkpoint ends where the uninterrupted 1-process run does;
    BatchTopK keeps exactly k * batch entries over the ranks when values tie at the cut-off."""
    _, store = one_process
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(archs=ARCHS, train=TRAIN))

    def stop_after_step_3(step, _stats):
        if step == 4:
            raise Interrupted

    with pytest.raises(Interrupted):  # leaves the checkpoint of step 3 in ddp/resumed
        train(
            store,
            tmp_path / "ddp" / "resumed",
            arch="topk",
            n_tokens=640,
            checkpoint_every=3,
            log_every=1,
            callback=stop_after_step_3,
            **TRAIN,
        )
    torchrun(str(script), str(store.path), str(tmp_path / "ddp"))
    picked = [json.loads((tmp_path / "ddp" / f"picked-{rank}.json").read_text()) for rank in (0, 1)]
    assert picked == [[0, 2, 3], [3]]  # ties fill the free slots in rank order: exactly 4 in all

    for arch in ARCHS:
        alone = train(store, tmp_path / "one" / arch, arch=arch, n_tokens=320, **TRAIN)
        together = load_sae(tmp_path / "ddp" / arch, device="cpu")
        for name, tensor in alone.state_dict().items():
            assert_equal_but_adam_noise(
                together.state_dict()[name], tensor, alone.meta["train"]["lr"], arch, name
            )
    alone = train(store, tmp_path / "one" / "resumed", arch="topk", n_tokens=640, checkpoint_every=3, **TRAIN)
    resumed = load_sae(tmp_path / "ddp" / "resumed", device="cpu")
    for name, tensor in alone.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=1e-5, atol=1e-5)
