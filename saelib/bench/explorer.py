"""`python -m saelib.bench explorer`: slider redraw time of the Explorer on a trained SAE (the demo's by
default): the callback, from cached latents to new HTML."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from saelib.bench.timing import timed
from saelib.corpus import STARTER_SENTENCES
from saelib.lm import load_lm
from saelib.sae import load_sae
from saelib.widgets import Explorer


def main(argv: list[str]) -> None:
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
    explorer.update.click()
    print(
        f"{args.ticks} slider ticks on {len(STARTER_SENTENCES)} texts, d_sae {sae.cfg.d_sae}: redraw median "
        f"{statistics.median(redraws):.2f} ms, max {max(redraws):.2f} ms (goal < 100 ms); "
        f"Update re-encode {explorer.last_encode_ms:.0f} ms; CPU share {share['cpu_share']:.2f} "
        "(the callback is single-threaded: 0.5 is one full core of two)"
    )
