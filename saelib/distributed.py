"""Where tensors live and how many processes share the work: devices, and torchrun's process group.

`resolve_device("auto")` is CUDA when torch sees one (the GPU numbered LOCAL_RANK under torchrun), else
the CPU. Under `torchrun --nproc-per-node N` each process reads RANK / WORLD_SIZE / LOCAL_RANK from its
environment; `init()` joins the process group (nccl on CUDA, gloo on CPU). Without torchrun every helper
here answers as the only process (rank 0 of 1) and never touches torch.distributed, so the same code runs
in a notebook.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saelib.errors import BadArgument


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda:LOCAL_RANK if torch sees a GPU, else cpu; any other name is checked, so a typo or a
    GPU this machine lacks fails here with the fix, not deep inside a forward."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise BadArgument(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise BadArgument(f"device {device!r}: torch sees no CUDA GPU here; use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BadArgument(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise BadArgument(f"device {device!r}: MPS is not available here; use 'cpu' or 'auto'")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise BadArgument(f"device {device!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return resolved


def to_device(batch: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU batch to `device`: through pinned memory without blocking on CUDA, so the copy overlaps
    the previous step's kernels."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


# ---- processes --------------------------------------------------------------------------------


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Rank 0: the process that prints, shows progress bars and writes the files all ranks share."""
    return rank() == 0


def init() -> None:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); nothing to do in a single process."""
    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(resolve_device("auto"))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def main_print(*args, **kwargs) -> None:
    """print() on rank 0 only, so N processes give one copy of every line."""
    if is_main():
        print(*args, **kwargs)


def block(n_items: int) -> range:
    """This rank's contiguous share of range(n_items): ranks hold consecutive, disjoint blocks in rank
    order, sizes differing by at most one."""
    start = n_items * rank() // world_size()
    return range(start, n_items * (rank() + 1) // world_size())


# ---- collectives (identity in a single process) -------------------------------------------------


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """Reduce `tensor` in place across ranks ('sum', 'max' or 'min') and return it."""
    if dist.is_initialized():
        dist.all_reduce(
            tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        )
    return tensor


def all_gather(tensor: Tensor) -> Tensor:
    """Concatenate every rank's `tensor` (same shape on all ranks) in rank order."""
    if not dist.is_initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def average_gradients(params: list[nn.Parameter]) -> None:
    """Mean of every parameter's gradient over ranks, in one flat all-reduce (one message, not one per
    tensor). A parameter without a gradient on this rank counts as zero."""
    if not dist.is_initialized():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):  # each gradient in its parameter's memory layout, as fused Adam needs
        p.grad = torch.empty_like(p).copy_(flat[offset : offset + g.numel()].view(p.shape))
        offset += g.numel()


def broadcast_module(module: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers, so all start from the very same weights."""
    if dist.is_initialized():
        for tensor in [*module.parameters(), *module.buffers()]:
            sent = tensor.data.contiguous()  # W_enc is stored transposed; collectives need contiguous
            dist.broadcast(sent, src=0)
            tensor.data.copy_(sent)
