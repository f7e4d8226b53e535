"""The architecture frontier at the main TopK demo budget (6 epochs per arch, as 02_train trains its SAE).

    .venv/bin/python scripts/full_frontier.py runs/demo runs/full-frontier

Reads the store of `make demo` (RUN_DIR/activations) and trains topk, batchtopk, matryoshka, jumprelu and
relu into OUT_DIR/frontier/<arch> (cached: rerunning only prints the table).
"""

import sys
import time

import saelib as sl


def main(run_dir: str, out_dir: str) -> None:
    start = time.perf_counter()
    store = sl.open_store(f"{run_dir}/activations")
    lm = sl.load_lm(store.model_name)
    probes = sl.probe_data(lm, store.layer, store.site, cache_dir=run_dir)
    base = sl.TrainConfig(epochs=6, progress=False)
    points = sl.arch_frontier(store, out_dir, lm, base=base, n_eval_texts=150, probes=probes)
    print(sl.frontier_table(points))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(*sys.argv[1:3])
