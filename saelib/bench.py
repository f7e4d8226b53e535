"""Benchmarks: `python -m saelib.bench collect`, `... train` and `... explorer`.

Ratios are measured side by side in one process, because the machines are shared: each timing
also records its CPU share (process CPU time / (wall time x cores)); a run that did not get all
cores is marked noisy and should be discarded.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def timed(result: dict):
    """Fill `result` with wall seconds and CPU share of the block."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    yield result
    wall = time.perf_counter() - wall0
    result["seconds"] = wall
    result["cpu_share"] = (time.process_time() - cpu0) / (wall * (os.cpu_count() or 1))


def reset_peak_rss() -> None:
    """Linux: start a fresh peak-RSS window (VmHWM) so each phase reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_collect(argv: list[str]) -> None:
    """Collection tokens/s vs a bare truncated forward of the same texts, same batching, same run."""
    import torch

    from saelib.corpus import load_corpus
    from saelib.lm import load_lm
    from saelib.store import collect, padded_batches

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
    layer = lm.resolve(None)
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
        noisy = min(bare["cpu_share"], ours["cpu_share"]) < 0.9
        print(
            f"repeat {repeat}: ratio collect/bare = {ratio:.3f}{'  (NOISY: did not get all cores)' if noisy else ''}"
        )
    print(f"\n{len(texts)} texts, {n_stored:,} stored tokens, layer {layer}, batch {args.batch_size}")
    print(f"{'what':28} {'tokens/s':>10} {'cpu share':>10} {'peak RSS MB':>12}")
    for row in rows:
        print(
            f"{row['what']:28} {n_stored / row['seconds']:10.0f} {row['cpu_share']:10.2f} {row['peak_rss_mb']:12.0f}"
        )
    clean = [(b, o) for b, o in zip(rows[::2], rows[1::2]) if min(b["cpu_share"], o["cpu_share"]) >= 0.9]
    if clean:
        best = max(b["seconds"] / o["seconds"] for b, o in clean)
        print(f"best clean ratio collect/bare: {best:.3f} (goal >= 0.9)")
    else:
        print("no clean run: every repeat lost CPU to other processes; rerun on a quiet machine")


def bench_explorer(argv: list[str]) -> None:
    """Slider redraw time of the Explorer on the demo SAE: the callback, from cached latents to new HTML."""
    import statistics

    from saelib.corpus import STARTER_SENTENCES
    from saelib.lm import load_lm
    from saelib.sae import load_sae
    from saelib.widgets import Explorer

    parser = argparse.ArgumentParser(prog="python -m saelib.bench explorer")
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--ticks", type=int, default=100)
    args = parser.parse_args(argv)
    sae = load_sae(Path(args.run_dir) / "sae")
    lm = load_lm(sae.meta["model"])
    explorer = Explorer(lm, sae, texts=list(STARTER_SENTENCES))
    redraws = []
    with timed(share := {}):
        for tick in range(args.ticks):
            if tick % 2:
                explorer.threshold.value = (tick % 20) * explorer.threshold.max / 25
            else:
                explorer.top_k.value = 1 + (tick * 7) % explorer.top_k.max
            redraws.append(explorer.last_redraw_ms)
    explorer.text.value = "The cat sat on the mat.\nParis is the capital of France."
    print(
        f"{args.ticks} slider ticks on {len(STARTER_SENTENCES)} texts, d_sae {sae.cfg.d_sae}: redraw median "
        f"{statistics.median(redraws):.2f} ms, max {max(redraws):.2f} ms (goal < 100 ms); "
        f"text box re-encode {explorer.last_encode_ms:.0f} ms; CPU share {share['cpu_share']:.2f} "
        "(the callback is single-threaded: 0.5 is one full core of two)"
    )


COMMANDS = {"collect": bench_collect, "explorer": bench_explorer}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*COMMANDS, "train"):
        sys.exit("usage: python -m saelib.bench collect|train|explorer [options]")
    if argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
    else:
        from saelib.bench_train import main as bench_train

        bench_train(argv[1:])


if __name__ == "__main__":
    main()
