"""saelib: train and inspect sparse autoencoders on a real language model's activations, in Jupyter.

    import saelib as sl
    lm = sl.load_lm()                                     # bundled SmolLM2-135M, offline
    store = sl.collect(lm, sl.load_corpus(n_texts=3000), "runs/demo/activations")
    sae = sl.train(store, "runs/demo", arch="topk", k=32)
    sl.evaluate(sae, store, lm, run_dir="runs/demo")
"""
from pathlib import Path

from saelib import analysis, feature_plots, plots, report, widgets
from saelib.analysis import encode_texts, feature_stats, label_concepts, top_features
from saelib.corpus import STARTER_SENTENCES, Document, corpus_stats, load_concepts, load_corpus
from saelib.lm import LM, SITES, load_lm
from saelib.metrics import evaluate
from saelib.report import write_dashboard
from saelib.sae import ARCHS, SAE, SAEConfig, load_sae
from saelib.store import ActivationStore, collect, open_store, store_from_tensor
from saelib.sweep import frontier_sweep
from saelib.train import TrainConfig, train
from saelib.widgets import Explorer

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where notebooks/, data/ and runs/ live in a checkout
