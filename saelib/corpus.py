"""Text sources for activation collection.

`load_corpus(spec)` turns a spec into a list of `Document`s:

    "builtin"                            offline mix built from what every Python install carries:
                                         the language reference (pydoc topics), stdlib docstrings,
                                         stdlib source code, plus the concept probe set
    "concepts", "concepts:train", ...    the hand-written sentences of saelib/data/concepts.jsonl
    "path/to/file_or_folder"             .txt (blank-line paragraphs), .jsonl ("text"), .csv ("text")
    "hf:<dataset>[:<split>[:<column>]]"  a Hugging Face dataset (needs `datasets` and network)
    [spec, spec, ...]                    concatenated

Texts are deduplicated. `n_texts` samples a fixed-size subset that keeps every source.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from saelib.errors import BadArgument, BadFile
from saelib.stdlib_texts import stdlib_texts


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    concept: str | None = None


STARTER_SENTENCES = [
    "Dogs are man's best friend.",
    "Neural networks process information.",
    "London is a major city.",
]

CONCEPT_SPLITS = ("train", "heldout")
FILE_SUFFIXES = (".txt", ".jsonl", ".csv")
PROBE_SOURCES = ("starter", "concepts")  # the probe set: sampling keeps it whole when it fits in
PROBE_MAX_SHARE = 2 / 3  # this share of n_texts (its sentences are short: in tokens it stays small)
SPEC_FORMS = (
    "'builtin', 'concepts', 'concepts:train', 'concepts:heldout', a path to a .txt/.jsonl/.csv file "
    "or a folder of them, 'hf:<dataset>[:<split>[:<column>]]', or a list of these"
)


def read_jsonl(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object holding the
    `required` fields is a BadFile naming file:line."""
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadFile(
                f"{path}:{line_no} is not valid JSON ({err.msg}); write one object per line"
            ) from err
        missing = [field for field in required if not isinstance(row, dict) or field not in row]
        if missing:
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise BadFile(
                f"{path}:{line_no} has no {' / '.join(map(repr, missing))} field (found: {found}); "
                f"each line must be a JSON object with {', '.join(map(repr, required))}"
            )
        yield line_no, row


# ---- concept probe set ---------------------------------------------------------------------
def concepts_path() -> Path:
    """The concept file shipped inside the package (saelib/data/concepts.jsonl, package data, so it is there
    after `pip install` too), unless the SAELIB_CONCEPTS env var points elsewhere."""
    override = os.environ.get("SAELIB_CONCEPTS")
    return Path(override) if override else Path(str(resources.files("saelib") / "data" / "concepts.jsonl"))


def load_concepts(split: str | None = None, path: str | os.PathLike | None = None) -> list[Document]:
    """Rows of the concept file as Documents (source "concepts"); split None means both splits."""
    if split not in (None, *CONCEPT_SPLITS):
        raise BadArgument(f"split must be None, 'train' or 'heldout', got {split!r}")
    path = Path(path) if path is not None else concepts_path()
    if not path.is_file():
        raise BadFile(
            f"Concept file not found at {path}; pass path=... or set the SAELIB_CONCEPTS "
            "environment variable to the location of concepts.jsonl"
        )
    docs = []
    for line_no, row in read_jsonl(path, ("text", "concept", "split")):
        if row["split"] not in CONCEPT_SPLITS:
            raise BadFile(f"{path}:{line_no}: 'split' must be 'train' or 'heldout', got {row['split']!r}")
        if split is None or row["split"] == split:
            docs.append(Document(row["text"], "concepts", row["concept"]))
    return docs


# ---- builtin: starter sentences, probe set, Python's own documentation and source ------------
def _builtin() -> list[Document]:
    """Starter sentences, the concept probe set (train split) and the stdlib texts."""
    docs = [Document(text, "starter") for text in STARTER_SENTENCES]
    try:
        docs += load_concepts("train")
    except BadFile as err:
        warnings.warn(f"'builtin' corpus without the concept probe set: {err}", stacklevel=3)
    return docs + [Document(text, source) for source, texts in stdlib_texts().items() for text in texts]


# ---- files and Hugging Face datasets -------------------------------------------------------
def _read_file(path: Path) -> list[str]:
    if path.suffix == ".txt":
        return [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))]
    if path.suffix == ".jsonl":
        return [str(row["text"]) for _, row in read_jsonl(path, ("text",))]
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise BadFile(
                f"{path} has no 'text' column (columns found: {reader.fieldnames or []}); "
                "rename the column that holds the documents to 'text'"
            )
        return [row["text"] or "" for row in reader]


def _from_path(path: Path) -> list[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
        if not files:
            raise BadFile(
                f"No {'/'.join(FILE_SUFFIXES)} files under folder {path}; add some or point to another folder"
            )
    elif path.suffix in FILE_SUFFIXES:
        files = [path]
    else:
        raise BadArgument(
            f"Unsupported file type {path.suffix!r} for {path}: use a {'/'.join(FILE_SUFFIXES)} file"
        )
    docs = [Document(text.strip(), str(file)) for file in files for text in _read_file(file) if text.strip()]
    if not docs:
        raise BadFile(
            f"No texts found in {path}: .txt files need paragraphs separated by blank lines, "
            ".jsonl lines a non-empty 'text' field, .csv files a non-empty 'text' column"
        )
    return docs


HF_SPEC = re.compile(r"hf:(?P<name>[^:]+)(?::(?P<split>[^:\[]+(?:\[[^\]]*\])?))?(?::(?P<column>[^:]+))?")


def _from_hf(spec: str) -> list[Document]:
    """A Hugging Face dataset; split may slice, e.g. "hf:wikitext:train[:2000]:text"."""
    match = HF_SPEC.fullmatch(spec)
    if match is None:
        raise BadArgument(f"Bad Hugging Face spec {spec!r}: use 'hf:<dataset>[:<split>[:<column>]]'")
    name, split, column = match["name"], match["split"] or "train", match["column"] or "text"
    unavailable = (
        f"Cannot load {spec!r}: the Hugging Face `datasets` package or the network is unavailable "
        "(pip install datasets, check the connection); the 'builtin' corpus works offline"
    )
    try:
        import datasets
    except ImportError as err:
        raise BadArgument(unavailable) from err
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # hub/network/file errors all mean: not loadable here
        raise BadArgument(f"{unavailable}. Error: {err}") from err
    if column not in dataset.column_names:
        raise BadArgument(
            f"Dataset {name!r} has no column {column!r} (columns: {dataset.column_names}); "
            f"use 'hf:{name}:{split}:<column>'"
        )
    docs = [
        Document(str(text).strip(), f"hf:{name}") for text in dataset[column] if text and str(text).strip()
    ]
    if not docs:
        raise BadArgument(f"Dataset {name!r} split {split!r} column {column!r} has no non-empty texts")
    return docs


# ---- spec dispatch and sampling ------------------------------------------------------------
def _load_one(spec: str | os.PathLike) -> list[Document]:
    if isinstance(spec, str):
        if spec == "builtin":
            return _builtin()
        if spec == "concepts" or spec.startswith("concepts:"):
            split = spec.partition(":")[2] or None
            if split not in (None, *CONCEPT_SPLITS):
                raise BadArgument(
                    f"Unknown concept split in {spec!r}: "
                    "use 'concepts', 'concepts:train' or 'concepts:heldout'"
                )
            return load_concepts(split)
        if spec.startswith("hf:"):
            return _from_hf(spec)
    path = Path(spec)
    if not path.exists():
        raise BadArgument(
            f"Unknown corpus spec {str(spec)!r} (no such file or folder either); valid forms: {SPEC_FORMS}"
        )
    return _from_path(path)


def _split_evenly(sizes: list[int], budget: int) -> list[int]:
    """Equal shares of `budget`; a smaller group is taken whole and the rest shared by the others."""
    quotas = [0] * len(sizes)
    remaining = sorted(range(len(sizes)), key=lambda i: sizes[i])
    while remaining:
        share = budget // len(remaining)
        if sizes[remaining[0]] <= share:
            group = remaining.pop(0)
            quotas[group] = sizes[group]
            budget -= sizes[group]
            continue
        extra = budget - share * len(remaining)
        for rank, group in enumerate(remaining):
            quotas[group] = share + (rank < extra)
        break
    return quotas


def _sample(docs: list[Document], n_texts: int, seed: int) -> list[Document]:
    """`n_texts` documents, an equal share per source; the probe set is kept whole if it fits in 2/3."""
    if n_texts >= len(docs):
        return docs
    groups: dict[str, list[int]] = defaultdict(list)
    for i, doc in enumerate(docs):
        groups["probe" if doc.source in PROBE_SOURCES else doc.source].append(i)
    names = list(groups)
    quotas = dict(zip(names, _split_evenly([len(groups[name]) for name in names], n_texts)))
    if "probe" in groups and len(groups) > 1 and len(groups["probe"]) <= n_texts * PROBE_MAX_SHARE:
        quotas["probe"] = len(groups["probe"])
        rest = [name for name in names if name != "probe"]
        quotas.update(
            zip(rest, _split_evenly([len(groups[name]) for name in rest], n_texts - quotas["probe"]))
        )
    rng = random.Random(seed)
    chosen = sorted(i for name, ids in groups.items() for i in rng.sample(ids, quotas[name]))
    return [docs[i] for i in chosen]


def load_corpus(
    spec: str | os.PathLike | Sequence[str | os.PathLike] = "builtin",
    n_texts: int | None = None,
    seed: int = 0,
) -> list[Document]:
    """Documents for `spec` (see the module docstring), deduplicated; `n_texts` samples them by `seed`."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise BadArgument(f"Empty list of corpus specs; valid forms: {SPEC_FORMS}")
    if n_texts is not None and (not isinstance(n_texts, int) or n_texts < 1):
        raise BadArgument(f"n_texts must be a positive integer or None, got {n_texts!r}")
    unique: dict[str, Document] = {}
    for one in specs:
        for doc in _load_one(one):
            unique.setdefault(doc.text, doc)
    docs = list(unique.values())
    return docs if n_texts is None else _sample(docs, n_texts, seed)


def corpus_stats(docs: Sequence[Document]) -> dict:
    """Counts per source and per concept and mean length, for a quick look before collecting."""
    docs = list(docs)
    return {
        "n_texts": len(docs),
        "mean_chars": sum(len(d.text) for d in docs) / max(len(docs), 1),
        "sources": dict(Counter(d.source for d in docs)),
        "concepts": dict(Counter(d.concept for d in docs if d.concept is not None)),
    }
