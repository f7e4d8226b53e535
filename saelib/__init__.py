"""saelib: train and inspect sparse autoencoders on a real language model's activations, in Jupyter.

    import saelib as sl
    lm = sl.load_lm()                                     # bundled SmolLM2-135M, offline
    store = sl.collect(lm, sl.load_corpus(n_texts=3000), "runs/demo/activations")
    sae = sl.train(store, "runs/demo", arch="topk", k=32)
    sl.evaluate(sae, store, lm, run_dir="runs/demo")

Names are imported on first use (module `__getattr__`), so `import saelib.sae` stays light:
it pulls neither matplotlib nor ipywidgets.
"""

from __future__ import annotations

import importlib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where notebooks/, data/ and runs/ live in a checkout

# public name -> module that defines it
_EXPORTS = {
    "SaelibError": "errors",
    "BadArgument": "errors",
    "BadFile": "errors",
    "TrainingDiverged": "errors",
    "LM": "lm",
    "SITES": "lm",
    "load_lm": "lm",
    "STARTER_SENTENCES": "corpus",
    "Document": "corpus",
    "corpus_stats": "corpus",
    "load_concepts": "corpus",
    "load_corpus": "corpus",
    "collect": "collect",
    "ActivationStore": "store",
    "open_store": "store",
    "store_from_tensor": "store",
    "ARCHS": "sae",
    "SAE": "sae",
    "SAEConfig": "sae",
    "load_sae": "sae",
    "TrainConfig": "train",
    "Trainer": "train",
    "train": "train",
    "evaluate": "metrics",
    "frontier_sweep": "sweep",
    "encode_texts": "analysis",
    "feature_stats": "analysis",
    "label_concepts": "analysis",
    "top_features": "analysis",
    "write_dashboard": "report",
    "Explorer": "widgets",
}
_MODULES = (
    "analysis",
    "collect",
    "corpus",
    "errors",
    "figures",
    "html",
    "lm",
    "metrics",
    "report",
    "sae",
    "sparse_ops",
    "store",
    "sweep",
    "train",
    "widgets",
)

__all__ = ["PROJECT_ROOT", *_EXPORTS, *_MODULES]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"saelib.{_EXPORTS[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"saelib.{name}")
    else:
        raise AttributeError(f"module 'saelib' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
