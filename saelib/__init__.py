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

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where notebooks/ and runs/ live in a checkout

# module -> the public names it defines. Modules are named apart from the functions they export
# (collection/collect, training/train): importing a submodule binds its name on the package, which
# would otherwise shadow the function.
_PUBLIC = {
    "errors": ("SaelibError", "BadArgument", "BadFile", "TrainingDiverged"),
    "hooks": ("SITES", "hook_name", "parse_hook"),
    "lm": ("LM", "load_lm"),
    "corpus": ("STARTER_SENTENCES", "Document", "corpus_stats", "load_concepts", "load_corpus"),
    "collection": ("collect", "store_from_tensor"),
    "store": ("ActivationStore", "open_store"),
    "sae": ("ARCHS", "SAE", "SAEConfig", "load_sae"),
    "trainer": ("TrainConfig", "Trainer"),
    "training": ("train",),
    "metrics": ("evaluate", "evaluate_many"),
    "probes": ("probe_data", "probing_metrics"),
    "sweep": ("frontier_sweep", "arch_frontier", "frontier_table"),
    "analysis": ("encode_texts", "feature_stats", "label_concepts", "top_features"),
    "report": ("write_dashboard",),
    "widgets": ("Explorer",),
}
_EXPORTS = {name: module for module, names in _PUBLIC.items() for name in names}
_MODULES = (
    *_PUBLIC,
    "atomic",
    "bench",
    "checkpoints",
    "distributed",
    "figures",
    "formats",
    "html",
    "hub",
    "losses",
    "malloc",
    "sparse_ops",
    "stdlib_texts",
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
