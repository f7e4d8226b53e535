"""`python -m saelib.bench train`: training tokens/s of each arch in both precisions against yardsticks,
in one process.

- dense reference: a float32 TopK SAE step written plainly in torch (encode GEMM, scatter the top k
  into zeros, dense decode GEMM, autograd backward, Adam) -- what the sparse path must beat;
- roofline, per precision: the six GEMMs of a dense forward + backward (torch.mm on preallocated
  tensors) -- the most a dense step (relu, jumprelu) could ever reach here;
- one-GEMM limit, per precision: the encoder GEMM alone -- the most a TopK step could reach.

bfloat16 rows run only where the CPU multiplies bf16 natively (saelib.precision); elsewhere they are
left out with a note, since emulated bf16 is slower than float32 and says nothing about the code.

Random data, no store; latents never count as dead, so AuxK (absent from the reference) stays off
and the steps compared do the same work. Every timing records its CPU share; one below 0.9 means
another process took a core, so the measurement is repeated (up to --repeats times) and flagged if
it stays noisy.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from saelib.bench.timing import MIN_CPU_SHARE, peak_rss_mb, reset_peak_rss, timed
from saelib.precision import DTYPES, cpu_flags, native_bf16
from saelib.sae import ARCHS, SAE, SAEConfig
from saelib.trainer import TrainConfig, Trainer

SHAPES = "512x2048,576x4608"  # d_in x d_sae


def _our_step(arch: str, d_in: int, d_sae: int, k: int, batch: torch.Tensor, precision: str):
    """saelib's Trainer.step at a constant lr (no warm-up or decay)."""
    cfg = TrainConfig(
        arch=arch,
        k=k,
        lr=1e-4,
        warmup_frac=0,
        decay_frac=0,
        dead_tokens=2**62,
        preact_tokens=2**62,
        precision=precision,
    )
    sae = SAE(SAEConfig(d_in, d_sae, arch=arch, k=k))
    with torch.no_grad():
        sae.W_dec.copy_(F.normalize(torch.randn(d_sae, d_in), dim=1))
        sae.W_enc.copy_(sae.W_dec.t())
        if arch == "jumprelu":
            sae.threshold.fill_(1.0)
    trainer = Trainer(sae, cfg, total_steps=10**9)
    return lambda: trainer.step(batch)


def _dense_reference_step(d_in: int, d_sae: int, k: int, batch: torch.Tensor):
    W_dec = F.normalize(torch.randn(d_sae, d_in), dim=1).requires_grad_()
    W_enc = W_dec.detach().t().clone().requires_grad_()
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = torch.zeros(d_in, requires_grad=True)
    optimizer = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4)

    def step():
        pre = (batch - b_dec) @ W_enc + b_enc
        top = pre.topk(k, dim=1)
        latents = torch.zeros_like(pre).scatter(1, top.indices, F.relu(top.values))
        recon = latents @ W_dec + b_dec
        loss = (recon - batch).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _roofline_step(d_in: int, d_sae: int, n: int, dtype: torch.dtype, n_gemms: int = 6):
    """Forward: x @ W_enc, z @ W_dec. Backward: z^T @ g, g @ W_dec^T, x^T @ g_pre, g_pre @ W_enc^T.
    The first `n_gemms` of them (1: the encoder GEMM alone)."""
    x, g = torch.randn(n, d_in, dtype=dtype), torch.randn(n, d_in, dtype=dtype)
    z, g_pre = torch.randn(n, d_sae, dtype=dtype), torch.randn(n, d_sae, dtype=dtype)
    W_enc, W_dec = torch.randn(d_in, d_sae, dtype=dtype), torch.randn(d_sae, d_in, dtype=dtype)
    out_latent, out_input = torch.empty(n, d_sae, dtype=dtype), torch.empty(n, d_in, dtype=dtype)
    out_dec, out_enc = torch.empty(d_sae, d_in, dtype=dtype), torch.empty(d_in, d_sae, dtype=dtype)
    gemms = [
        lambda: torch.mm(x, W_enc, out=out_latent),
        lambda: torch.mm(z, W_dec, out=out_input),
        lambda: torch.mm(z.t(), g, out=out_dec),
        lambda: torch.mm(g, W_dec.t(), out=out_latent),
        lambda: torch.mm(x.t(), g_pre, out=out_enc),
        lambda: torch.mm(g_pre, W_enc.t(), out=out_input),
    ][:n_gemms]

    def step():
        for gemm in gemms:
            gemm()

    return step


def _measure(steps: dict, n_tokens: int, seconds: float, repeats: int) -> dict:
    """tokens/s of each step, run round-robin so that load from other processes hits all alike.

    Each step runs for at least `seconds` in total; a step whose CPU share is below 0.9 is measured
    again (up to `repeats` attempts) and flagged noisy if it never gets the cores.
    """
    results = {}
    for step in steps.values():
        step()  # warm-up: allocations, Adam state
    pending = dict(steps)
    for attempt in range(1, repeats + 1):
        totals = {name: {"seconds": 0.0, "cpu": 0.0, "steps": 0, "peak_rss_mb": 0.0} for name in pending}
        while running := [n for n, t in totals.items() if t["steps"] < 2 or t["seconds"] < seconds]:
            for name in running:  # a kind with its seconds stops: slow kinds must not keep fast ones going
                step = pending[name]
                reset_peak_rss()
                with timed(one := {}):
                    step()
                total = totals[name]
                total["seconds"] += one["seconds"]
                total["cpu"] += one["cpu_share"] * one["seconds"]
                total["steps"] += 1
                total["peak_rss_mb"] = max(total["peak_rss_mb"], peak_rss_mb())
        for name, total in totals.items():
            cpu_share = total["cpu"] / total["seconds"]
            results[name] = {
                "tokens_per_s": total["steps"] * n_tokens / total["seconds"],
                "cpu_share": cpu_share,
                "peak_rss_mb": total["peak_rss_mb"],
                "attempts": attempt,
                "noisy": cpu_share < MIN_CPU_SHARE,
            }
        pending = {name: step for name, step in pending.items() if results[name]["noisy"]}
        if not pending:
            break
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saelib.bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per step kind")
    parser.add_argument("--repeats", type=int, default=3, help="attempts per measurement while noisy")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--shapes", default=SHAPES, help="d_in x d_sae pairs, comma-separated")
    parser.add_argument("--quick", action="store_true", help="1 s per measurement, one attempt")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 1.0, 1
    archs = args.archs.split(",")
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown:
        parser.error(f"unknown arch(s) {unknown}; choose from {ARCHS}")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    precisions = ["float32", "bfloat16"]
    bf16_flags = sorted(flag for flag in cpu_flags() if "bf16" in flag)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, k {args.k}, "
        f"CPU bf16 flags: {', '.join(bf16_flags) or 'none'}"
    )
    if not native_bf16("cpu"):
        precisions = ["float32"]
        print("bfloat16 rows skipped: this CPU has no native bf16 instructions (amx_bf16 / avx512_bf16)")

    header = f"{'shape':>11} {'step':>24} {'tok/s':>9} {'/dense-ref':>10} {'/roofline':>9} "
    header += f"{'/1-GEMM':>7} {'RSS MB':>7} {'CPU':>5}"
    rows = []
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    for d_in, d_sae in shapes:
        batch = torch.randn(args.batch_size, d_in)
        steps = {"dense ref topk float32": _dense_reference_step(d_in, d_sae, args.k, batch)}
        for precision in precisions:
            dtype = DTYPES[precision]
            steps[f"roofline 6 GEMM {precision}"] = _roofline_step(d_in, d_sae, args.batch_size, dtype)
            steps[f"1 GEMM {precision}"] = _roofline_step(d_in, d_sae, args.batch_size, dtype, n_gemms=1)
            for arch in archs:
                steps[f"{arch} {precision}"] = _our_step(arch, d_in, d_sae, args.k, batch, precision)
        results = _measure(steps, args.batch_size, args.seconds, args.repeats)
        dense = results["dense ref topk float32"]["tokens_per_s"]
        for name, r in results.items():
            precision = name.split()[-1]
            roofline = results[f"roofline 6 GEMM {precision}"]["tokens_per_s"]
            one_gemm = results[f"1 GEMM {precision}"]["tokens_per_s"]
            flag = " NOISY" if r["noisy"] else ""
            rows.append(
                f"{d_in:>4}x{d_sae:<6} {name:>24} {r['tokens_per_s']:9.0f} {r['tokens_per_s'] / dense:10.2f} "
                f"{r['tokens_per_s'] / roofline:9.2f} {r['tokens_per_s'] / one_gemm:7.2f} "
                f"{r['peak_rss_mb']:7.0f} {r['cpu_share']:5.2f}{flag}"
            )
        print("\n".join([header, *rows[-len(results) :]]), flush=True)
    print(
        "\nratios: tokens/s of the step over the float32 dense reference TopK step, over the six-GEMM\n"
        "roofline and over the encoder GEMM alone, both of the row's precision.\n"
        "CPU = process CPU time / (wall x cores); NOISY = below 0.9 after all attempts: another process\n"
        "took a core, discard that row."
    )
