"""saelib: train and inspect sparse autoencoders on a real language model's activations, in Jupyter.

    import saelib as sl
    lm = sl.load_lm()                                   # bundled SmolLM2-135M, offline
    store = sl.collect(lm, sl.load_corpus(), "runs/demo/activations")
"""
from pathlib import Path

from saelib.corpus import STARTER_SENTENCES, Document, corpus_stats, load_concepts, load_corpus
from saelib.lm import LM, SITES, load_lm
from saelib.store import ActivationStore, collect, open_store, store_from_tensor

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where notebooks/, data/ and runs/ live in a checkout
