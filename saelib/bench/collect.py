"""`python -m saelib.bench collect`: collection tokens/s against a bare truncated forward of the same
texts with the same batching, in the same run, and the peak RSS of each."""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from saelib.bench.timing import MIN_CPU_SHARE, peak_rss_mb, reset_peak_rss, timed
from saelib.collection import collect, padded_batches
from saelib.corpus import load_corpus
from saelib.lm import load_lm


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m saelib.bench collect")
    parser.add_argument("--model", default="default")
    parser.add_argument("--n-texts", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)

    lm = load_lm(args.model)
    print(f"{lm}\nload time (weights cached): {lm.load_seconds:.2f} s")
    layer, _ = lm.resolve(None)
    texts = [d.text for d in load_corpus("builtin", n_texts=args.n_texts, seed=0)]
    input_ids = lm.tokenizer(texts, truncation=True, max_length=args.max_tokens)["input_ids"]
    n_stored = sum(len(ids) - 1 for ids in input_ids)

    def bare_forward():
        for _docs, ids, mask in padded_batches(
            input_ids, range(len(texts)), args.batch_size, lm.tokenizer.pad_token_id
        ):
            lm.forward_to(ids, mask, layer, "resid")

    rows = []
    for repeat in range(args.repeats):
        bare = {"what": "bare truncated forward"}
        reset_peak_rss()
        with timed(bare):
            bare_forward()
        bare["peak_rss_mb"] = peak_rss_mb()
        ours = {"what": "saelib.collect (to disk)"}
        with tempfile.TemporaryDirectory() as tmp:
            reset_peak_rss()
            with timed(ours):
                collect(
                    lm,
                    texts,
                    tmp,
                    layer=layer,
                    max_tokens_per_text=args.max_tokens,
                    batch_size=args.batch_size,
                    progress=False,
                )
            ours["peak_rss_mb"] = peak_rss_mb()
        rows += [bare, ours]
        ratio = bare["seconds"] / ours["seconds"]
        noisy = (
            "  (NOISY: did not get all cores)"
            if min(bare["cpu_share"], ours["cpu_share"]) < MIN_CPU_SHARE
            else ""
        )
        print(f"repeat {repeat}: ratio collect/bare = {ratio:.3f}{noisy}")
    print(f"\n{len(texts)} texts, {n_stored:,} stored tokens, layer {layer}, batch {args.batch_size}")
    print(f"{'what':28} {'tokens/s':>10} {'cpu share':>10} {'peak RSS MB':>12}")
    for row in rows:
        tokens_per_s = n_stored / row["seconds"]
        print(f"{row['what']:28} {tokens_per_s:10.0f} {row['cpu_share']:10.2f} {row['peak_rss_mb']:12.0f}")
    clean = [
        (b, o) for b, o in zip(rows[::2], rows[1::2]) if min(b["cpu_share"], o["cpu_share"]) >= MIN_CPU_SHARE
    ]
    if clean:
        best = max(b["seconds"] / o["seconds"] for b, o in clean)
        print(f"best clean ratio collect/bare: {best:.3f} (goal >= 0.9)")
    else:
        print("no clean run: every repeat lost CPU to other processes; rerun on a quiet machine")
