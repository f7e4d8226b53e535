"""`python -m saelib.bench scale`: training tokens/s with 1 and 2 CPU processes under torchrun, and the bytes
all-reduced per step.

Both runs are `torchrun --standalone --nproc-per-node N -m saelib train` (OMP_NUM_THREADS=1, so one core
per process) on the same store of random activations (a step's speed does not depend on the values) with
the same global batch. tokens/s counts the steps after the first --warmup-steps, timed by the progress bar
of rank 0 (asked through tqdm's TQDM_* environment variables to print its step count and elapsed seconds
on every step), so start-up, initialisation and saving are left out.

Communication volume is measured in this process: a Trainer in a one-process gloo group, with
torch.distributed.all_reduce wrapped to add up the bytes of every tensor it is given during a step (the
flat gradient all-reduce plus the dead-latent, threshold and loss statistics). A ring all-reduce over N
ranks sends and receives 2 (N-1)/N times that per rank.

CPU share = CPU time of torchrun and its workers / (wall x cores). A run whose processes got less than
0.9 core each on average is flagged: another process took the cores and its tokens/s is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from saelib.bench.timing import MIN_CPU_SHARE
from saelib.collection import store_from_tensor
from saelib.sae import SAE, SAEConfig
from saelib.trainer import TrainConfig, Trainer

STEP_LINE = re.compile(r"^(\d+) (\d+\.\d+)$", flags=re.MULTILINE)


def allreduce_bytes_per_step(d_in: int, d_sae: int, k: int, batch_size: int, arch: str) -> dict[str, int]:
    """Bytes handed to all_reduce in one training step, by kind (the gradients' flat tensor vs the rest)."""
    counted = {"gradients": 0, "statistics": 0}
    all_reduce = dist.all_reduce
    sae = SAE(SAEConfig(d_in, d_sae, arch=arch, k=k))
    n_parameters = sum(p.numel() for p in sae.parameters())

    def counting_all_reduce(tensor, *args, **kwargs):
        kind = "gradients" if tensor.numel() == n_parameters else "statistics"
        counted[kind] += tensor.numel() * tensor.element_size()
        return all_reduce(tensor, *args, **kwargs)

    cfg = TrainConfig(arch=arch, k=k, batch_size=batch_size, device="cpu", progress=False)
    trainer = Trainer(sae, cfg, total_steps=2)
    batch = torch.randn(batch_size, d_in)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        trainer.step(batch)  # allocations, Adam state
        counted.update(gradients=0, statistics=0)
        dist.all_reduce = counting_all_reduce
        trainer.step(batch)
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()
    return {**counted, "total": counted["gradients"] + counted["statistics"], "parameters": n_parameters}


def run_training(
    n_processes: int, run_dir: Path, train_args: list[str], batch_size: int, warmup_steps: int
) -> dict:
    """One `torchrun -m saelib train` run: tokens/s after warm-up from rank 0's per-step timestamps, and
    the CPU share all its processes got."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TQDM_BAR_FORMAT": "{n} {elapsed_s:.4f}\n",
        "TQDM_MININTERVAL": "0",
        "TQDM_MINITERS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    command += [str(n_processes), "-m", "saelib", "train", "--run-dir", str(run_dir), *train_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    stamps: dict[int, float] = {}
    for n, seconds in STEP_LINE.findall(result.stderr.replace("\r", "\n")):
        stamps.setdefault(int(n), float(seconds))
    first, last = warmup_steps, max(stamps)
    if first not in stamps or last <= first:
        sys.exit(f"no per-step timestamps after step {first} in the output of {' '.join(command)}")
    step_seconds = (stamps[last] - stamps[first]) / (last - first)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    cores_used = cpu / wall
    return {
        "processes": n_processes,
        "timed_steps": last - first,
        "step_seconds": step_seconds,
        "tokens_per_s": batch_size / step_seconds,
        "wall_seconds": wall,
        "cpu_share": cores_used / (os.cpu_count() or 1),
        "cores_per_process": cores_used / n_processes,
        "short_of_cores": cores_used / n_processes < MIN_CPU_SHARE,
    }


def scale_report(
    d_in: int, d_sae: int, k: int, batch_size: int, steps: int, warmup_steps: int, arch: str, workdir: Path
) -> dict:
    """Train 1 and 2 processes on one random store; tokens/s, efficiency and all-reduce bytes per step."""
    if d_sae % d_in:
        sys.exit(f"--d-sae {d_sae} must be a multiple of --d-in {d_in} (the CLI takes an expansion factor)")
    if batch_size % 2:
        sys.exit(f"--batch-size {batch_size} must be even, so that 2 processes split it")
    if steps <= warmup_steps:
        sys.exit(f"--steps {steps} must be more than --warmup-steps {warmup_steps}")
    torch.manual_seed(0)
    store = store_from_tensor(torch.randn(batch_size * 8, d_in), workdir / "store")
    train_args = ["--arch", arch, "--k", str(k), "--expansion", str(d_sae // d_in)]
    train_args += ["--batch-size", str(batch_size), "--n-tokens", str(batch_size * steps)]
    train_args += ["--device", "cpu", "--checkpoint-every", str(10**9)]
    runs = []
    for n_processes in (1, 2):
        run_dir = workdir / f"run-{n_processes}"  # its own checkpoints (else run 2 would resume run 1)
        run_dir.mkdir()
        (run_dir / "activations").symlink_to(store.path.resolve(), target_is_directory=True)
        runs.append(run_training(n_processes, run_dir, train_args, batch_size, warmup_steps))
    return {
        "shape": dict(d_in=d_in, d_sae=d_sae, k=k, batch_size=batch_size, steps=steps, arch=arch),
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "efficiency": runs[1]["tokens_per_s"] / (2 * runs[0]["tokens_per_s"]),
        "allreduce_bytes_per_step": allreduce_bytes_per_step(d_in, d_sae, k, batch_size, arch),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saelib.bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch, split over the processes")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--arch", default="topk")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="saelib-bench-scale-") as workdir:
        shape = (args.d_in, args.d_sae, args.k, args.batch_size, args.steps, args.warmup_steps, args.arch)
        report = scale_report(*shape, Path(workdir))
    if args.json:
        print(json.dumps(report, indent=1))
        return
    shape = report["shape"]
    print(
        f"{shape['arch']} {shape['d_in']} -> {shape['d_sae']}, k {shape['k']}, global batch "
        f"{shape['batch_size']}, {shape['steps']} steps, {report['cpu_count']} cores, "
        f"torch {torch.__version__}"
    )
    print(f"{'procs':>5} {'tok/s':>9} {'s/step':>8} {'timed':>5} {'wall s':>7} {'CPU':>5} {'cores/proc':>10}")
    for run in report["runs"]:
        flag = " SHORT OF CORES" if run["short_of_cores"] else ""
        print(
            f"{run['processes']:>5} {run['tokens_per_s']:9.0f} {run['step_seconds']:8.3f} "
            f"{run['timed_steps']:>5} {run['wall_seconds']:7.1f} {run['cpu_share']:5.2f} "
            f"{run['cores_per_process']:10.2f}{flag}"
        )
    volume = report["allreduce_bytes_per_step"]
    print(
        f"scaling efficiency (tok/s at 2 / (2 x tok/s at 1)): {report['efficiency']:.2f}\n"
        f"all-reduced per step: {volume['total']:,} bytes = {volume['gradients']:,} gradients "
        f"({volume['parameters']:,} float32 parameters) + {volume['statistics']:,} statistics\n"
        "CPU = CPU time of torchrun and its workers / (wall x cores); SHORT OF CORES = under "
        f"{MIN_CPU_SHARE} core per process: another process took the cores, that tok/s is a lower bound."
    )
