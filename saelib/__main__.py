"""The command line: `python -m saelib collect|train|evaluate|report`, the notebooks' pipeline, no Jupyter.

Same defaults as the notebooks, so `collect`, `train`, `evaluate` and `report` on one --run-dir
reproduce `make demo`'s results. Progress bars go to stderr; a saelib error prints one line naming the
fix and exits with status 2. Under `torchrun --nproc-per-node N`, `collect` and `train` split the work
over the N processes (see saelib.distributed); only rank 0 prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from saelib import distributed
from saelib.errors import BadArgument, SaelibError

EXAMPLES = """examples:
  python -m saelib collect --run-dir runs/demo                      # bundled SmolLM2, builtin corpus
  python -m saelib collect --run-dir runs/small --n-texts 300 --model EleutherAI/pythia-70m --layer 3
  python -m saelib collect --run-dir runs/pre --layer blocks.15.hook_resid_pre
  python -m saelib train --run-dir runs/demo --arch topk --k 32
  python -m saelib evaluate --run-dir runs/demo --n-eval-texts 150
  python -m saelib report --run-dir runs/demo                        # runs/demo/report/dashboard.html
  python -m saelib collect --model EleutherAI/pythia-1b --device-map auto   # spread over GPUs and CPU
  OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 -m saelib collect --run-dir runs/demo  # 2 processes
  OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 -m saelib train --run-dir runs/demo --device cpu
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown."""


def run_collect(args: argparse.Namespace) -> None:
    from saelib.collection import collect
    from saelib.corpus import load_corpus
    from saelib.lm import load_lm

    lm = load_lm(
        args.model, device=args.device, device_map=parse_device_map(args.device_map), precision=args.precision
    )
    docs = load_corpus(args.corpus, n_texts=args.n_texts, seed=args.seed)
    store = collect(
        lm,
        docs,
        Path(args.run_dir) / "activations",
        layer=args.layer,
        site=args.site,
        max_tokens_per_text=args.max_tokens_per_text,
        dtype=args.dtype,
        batch_size=args.batch_size,
        shard_tokens=args.shard_tokens,
        corpus_spec={"spec": args.corpus, "n_texts": args.n_texts, "seed": args.seed},
        progress=distributed.is_main(),
    )
    distributed.main_print(store)


def run_train(args: argparse.Namespace) -> None:
    from saelib.store import open_store
    from saelib.trainer import TrainConfig
    from saelib.training import train

    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    sae = train(open_store(args.run_dir), args.run_dir, TrainConfig(**options))
    distributed.main_print(f"{sae!r}\nsaved to {Path(args.run_dir) / 'sae'}")


def run_evaluate(args: argparse.Namespace) -> None:
    from saelib.lm import load_lm
    from saelib.metrics import evaluate
    from saelib.sae import load_sae
    from saelib.store import open_store

    sae, store = load_sae(args.run_dir, device=args.device), open_store(args.run_dir)
    lm = None
    if not args.no_lm:
        lm = load_lm(store.model_name, args.device, parse_device_map(args.device_map), args.precision)
    texts = store.documents("eval")[: args.n_eval_texts] if lm is not None else None
    metrics = evaluate(sae, store, lm, texts=texts, run_dir=args.run_dir)
    summary = {key: value for key, value in metrics.items() if key != "feature_density"}
    print(json.dumps(summary, indent=1))


def run_report(args: argparse.Namespace) -> None:
    from saelib.analysis import label_concepts
    from saelib.lm import load_lm
    from saelib.report import write_dashboard
    from saelib.sae import load_sae
    from saelib.store import open_store

    sae, store = load_sae(args.run_dir, device=args.device), open_store(args.run_dir)
    lm = load_lm(store.model_name, args.device, parse_device_map(args.device_map), args.precision)
    labels = None if args.no_labels else label_concepts(lm, sae)
    path = write_dashboard(args.run_dir, lm, sae, store, features=args.features, labels=labels)
    print(path)


def parse_device_map(text: str | None) -> str | dict | None:
    """--device-map: 'auto', 'balanced', 'sequential', or a JSON object of module name -> device."""
    if text is None or not text.startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadArgument(
            f"--device-map {text!r} is not valid JSON ({err}); pass 'auto' or e.g. "
            '\'{"model.embed_tokens": 0, "model.layers.0": 0, "lm_head": 1}\''
        ) from err


def layer_or_hook(text: str) -> int | str:
    """--layer 8 is a block index; anything else is a hook name that LM.resolve checks."""
    return int(text) if text.lstrip("-").isdigit() else text


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One --option per TrainConfig field, with its default."""
    from saelib.trainer import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help="default: %(default)s"
            )
        elif str(field.type).startswith("list[int]"):  # matryoshka's prefixes: --prefixes 288 1152 4608
            parser.add_argument(
                flag, type=int, nargs="+", default=default, metavar="INT", help="default: %(default)s"
            )
        else:  # the annotation names the type, also where the default is None ("float | None" for lr)
            kind = {"int": int, "float": float, "str": str}[str(field.type).split(" |")[0]]
            parser.add_argument(
                flag, type=kind, default=default, metavar=kind.__name__.upper(), help="default: %(default)s"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m saelib",
        description="Collect activations, train and evaluate a sparse autoencoder, write its dashboard.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, run) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES,
            formatter_class=HelpFormatter,
        )
        sub.add_argument("--run-dir", default="runs/demo", help="the run folder")
        sub.set_defaults(run=run)
        return sub

    collect = command(
        "collect", "Run a corpus through the LM and store activations in RUN_DIR/activations.", run_collect
    )
    collect.add_argument("--model", default="default", help="'default' (bundled SmolLM2), an HF id or a dir")
    collect.add_argument(
        "--layer",
        type=layer_or_hook,
        default=None,
        help="block index (None: the middle layer) or a hook name: blocks.8.hook_resid_pre, model.layers.8",
    )
    collect.add_argument(
        "--site", default=None, help="resid (block output, the default), resid_pre, mlp_out or attn_out"
    )
    collect.add_argument("--corpus", default="builtin", help="builtin, concepts, a file/folder, hf:<name>")
    collect.add_argument("--n-texts", type=int, default=None, help="sample this many texts (None: all)")
    collect.add_argument("--max-tokens-per-text", type=int, default=64)
    collect.add_argument("--batch-size", type=int, default=32)
    collect.add_argument("--shard-tokens", type=int, default=16384, help="tokens per shard file")
    collect.add_argument("--dtype", default="float16", help="float16, bfloat16 or float32 shards")
    collect.add_argument("--seed", type=int, default=0)

    train = command(
        "train", "Train an SAE on RUN_DIR/activations; writes RUN_DIR/sae (resumes if stopped).", run_train
    )
    add_train_options(train)

    evaluate = command("evaluate", "Measure the SAE in RUN_DIR; writes RUN_DIR/metrics.json.", run_evaluate)
    evaluate.add_argument(
        "--n-eval-texts", type=int, default=150, help="held-out texts for CE-loss recovered"
    )
    evaluate.add_argument("--no-lm", action="store_true", help="reconstruction metrics only (no LM needed)")

    report = command("report", "Write RUN_DIR/report/dashboard.html for the SAE in RUN_DIR.", run_report)
    report.add_argument("--features", type=int, nargs="+", default=None, help="feature indices to show")
    report.add_argument("--no-labels", action="store_true", help="skip concept labelling (faster)")

    for sub in (collect, evaluate, report):
        sub.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
        sub.add_argument(
            "--device-map",
            default=None,
            help="spread the LM over devices with accelerate: auto, balanced, sequential or a JSON object",
        )
        sub.add_argument(
            "--precision", default="auto", help="the LM's: auto (bfloat16 where native), float32, bfloat16"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not distributed.is_main():
        os.environ["TQDM_DISABLE"] = "1"  # one progress bar per job, rank 0's (transformers' bars too)
    try:
        if distributed.world_size() > 1 and args.command in ("evaluate", "report"):
            raise BadArgument(
                f"{args.command} runs in one process: launch it with python -m saelib, not torchrun"
            )
        distributed.resolve_device(args.device)  # a bad --device fails now, not after loading the model
        distributed.init()
        args.run(args)
    except SaelibError as err:
        print(f"error: {err}", file=sys.stderr)  # on every rank: each says what failed on it
        return 2
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
