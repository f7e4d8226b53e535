"""`python -m saelib.bench collect`: collection tokens/s against a bare truncated forward of the same
texts with the same batching, in the same run, and the peak RSS of each; in float32 and, where the
CPU multiplies bf16 natively, in bfloat16 too, with the activation error between the two."""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch import Tensor

from saelib.batching import padded_batches
from saelib.bench.timing import MIN_CPU_SHARE, peak_rss_mb, reset_peak_rss, timed
from saelib.collection import collect
from saelib.corpus import load_corpus
from saelib.lm import load_lm
from saelib.precision import native_bf16


def _activation_error(lms: dict, input_ids: list, layer: int, batch_size: int) -> Tensor:
    """Per-token relative error |bf16 - f32| / |f32| of the stored activations (every position but the
    sink token, which collection leaves out)."""
    errors = []
    pad_id = lms["float32"].tokenizer.pad_token_id
    for _docs, ids, mask in padded_batches(input_ids, range(len(input_ids)), batch_size, pad_id):
        acts = {name: lm.forward_to(ids, mask, layer, "resid") for name, lm in lms.items()}
        keep = mask.bool()
        keep[:, 0] = False
        diff = (acts["bfloat16"] - acts["float32"])[keep].norm(dim=1)
        errors.append(diff / acts["float32"][keep].norm(dim=1))
    return torch.cat(errors)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m saelib.bench collect")
    parser.add_argument("--model", default="default")
    parser.add_argument("--n-texts", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)

    precisions = ["float32", "bfloat16"] if native_bf16("cpu") else ["float32"]
    lms = {name: load_lm(args.model, device="cpu", precision=name) for name in precisions}
    for lm in lms.values():
        print(f"{lm}\nload time (weights cached): {lm.load_seconds:.2f} s")
    if len(precisions) == 1:
        print("bfloat16 skipped: this CPU has no native bf16 instructions (amx_bf16 / avx512_bf16)")
    lm = lms["float32"]
    layer, _ = lm.resolve(None)
    texts = [d.text for d in load_corpus("builtin", n_texts=args.n_texts, seed=0)]
    input_ids = lm.token_ids(texts, args.max_tokens)
    n_stored = sum(len(ids) - 1 for ids in input_ids)

    def bare_forward(model):
        for _docs, ids, mask in padded_batches(
            input_ids, range(len(texts)), args.batch_size, model.tokenizer.pad_token_id
        ):
            model.forward_to(ids, mask, layer, "resid")

    rows = []
    for repeat in range(args.repeats):
        for name, model in lms.items():
            bare = {"what": f"bare truncated forward {name}", "repeat": repeat}
            reset_peak_rss()
            with timed(bare):
                bare_forward(model)
            bare["peak_rss_mb"] = peak_rss_mb()
            ours = {"what": f"saelib.collect {name}", "repeat": repeat, "precision": name}
            with tempfile.TemporaryDirectory() as tmp:
                reset_peak_rss()
                with timed(ours):
                    collect(
                        model,
                        texts,
                        tmp,
                        layer=layer,
                        max_tokens_per_text=args.max_tokens,
                        batch_size=args.batch_size,
                        progress=False,
                    )
                ours["peak_rss_mb"] = peak_rss_mb()
            rows += [bare, ours]
    print(f"\n{len(texts)} texts, {n_stored:,} stored tokens, layer {layer}, batch {args.batch_size}")
    print(f"{'what':34} {'repeat':>6} {'tokens/s':>10} {'cpu share':>10} {'peak RSS MB':>12}")
    for row in rows:
        tokens_per_s = n_stored / row["seconds"]
        noisy = "  NOISY" if row["cpu_share"] < MIN_CPU_SHARE else ""
        print(
            f"{row['what']:34} {row['repeat']:6d} {tokens_per_s:10.0f} {row['cpu_share']:10.2f} "
            f"{row['peak_rss_mb']:12.0f}{noisy}"
        )
    for name in precisions:
        pairs = [(b, o) for b, o in zip(rows[::2], rows[1::2]) if o["precision"] == name]
        clean = [(b, o) for b, o in pairs if min(b["cpu_share"], o["cpu_share"]) >= MIN_CPU_SHARE]
        best = max(b["seconds"] / o["seconds"] for b, o in clean or pairs)
        label = "clean" if clean else "NOISY (no clean repeat)"
        print(f"{name}: best {label} ratio collect/bare {best:.3f} (goal >= 0.9)")
    if len(precisions) == 2:
        collects = {name: [r for r in rows if r.get("precision") == name] for name in precisions}
        speedups = [f["seconds"] / b["seconds"] for f, b in zip(collects["float32"], collects["bfloat16"])]
        shares = [
            min(f["cpu_share"], b["cpu_share"]) for f, b in zip(collects["float32"], collects["bfloat16"])
        ]
        print(
            "collect bfloat16 / float32 speed, per repeat: "
            + ", ".join(
                f"{x:.2f}" + ("" if share >= MIN_CPU_SHARE else " NOISY")
                for x, share in zip(speedups, shares)
            )
            + " (goal >= 2.5)"
        )
        error = _activation_error(lms, input_ids, layer, args.batch_size)
        print(
            f"activation error bf16 vs float32 over {len(error):,} tokens: median {error.median():.2%}, "
            f"p99 {error.quantile(0.99):.2%} (goal: median <= 2%)"
        )
