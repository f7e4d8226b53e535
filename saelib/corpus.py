"""Text sources for activation collection.

`load_corpus(spec)` turns a spec into a list of `Document`s:

    "builtin"                            offline mix built from what every Python install carries:
                                         the language reference (pydoc topics), stdlib docstrings,
                                         stdlib source code, plus the concept probe set
    "concepts", "concepts:train", ...    the hand-written sentences of data/concepts.jsonl
    "path/to/file_or_folder"             .txt (blank-line paragraphs), .jsonl ("text"), .csv ("text")
    "hf:<dataset>[:<split>[:<column>]]"  a Hugging Face dataset (needs `datasets` and network)
    [spec, spec, ...]                    concatenated

Texts are deduplicated. `n_texts` samples a fixed-size subset that keeps every source.
"""

from __future__ import annotations

import ast
import csv
import functools
import json
import os
import random
import re
import sysconfig
import textwrap
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    concept: str | None = None


STARTER_SENTENCES = ["Dogs are man's best friend.", "Neural networks process information.", "London is a major city."]

CONCEPT_SPLITS = ("train", "heldout")
FILE_SUFFIXES = (".txt", ".jsonl", ".csv")
PROBE_SOURCES = ("starter", "concepts")  # the probe set: sampling keeps it whole when it fits in
PROBE_MAX_SHARE = 2 / 3                  # this share of n_texts (its sentences are short: in tokens it stays small)
BUILTIN_MAX_PER_SOURCE = 1500  # the stdlib has ~15k functions; cap each stdlib source so none drowns the rest
MAX_PROSE_CHARS = 400
MAX_PROSE_SENTENCES = 4
MAX_CODE_LINES = 25
# stdlib folders left out: tests, vendored/bundled code, codec tables, GUI demos and the pydoc topics module itself
STDLIB_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data",
                    "lib2to3", "turtledemo", "ensurepip", "idlelib", "tkinter", "distutils", "__phello__"}
SPEC_FORMS = ("'builtin', 'concepts', 'concepts:train', 'concepts:heldout', a path to a .txt/.jsonl/.csv file "
              "or a folder of them, 'hf:<dataset>[:<split>[:<column>]]', or a list of these")


# ---- concept probe set ---------------------------------------------------------------------
def concepts_path() -> Path:
    """data/concepts.jsonl next to the package, unless the SAELIB_CONCEPTS env var points elsewhere."""
    override = os.environ.get("SAELIB_CONCEPTS")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "data" / "concepts.jsonl"


def load_concepts(split: str | None = None, path: str | os.PathLike | None = None) -> list[Document]:
    """Rows of the concept file as Documents (source "concepts"); split None means both splits."""
    if split not in (None, *CONCEPT_SPLITS):
        raise ValueError(f"split must be None, 'train' or 'heldout', got {split!r}")
    path = Path(path) if path is not None else concepts_path()
    if not path.is_file():
        raise ValueError(f"Concept file not found at {path}; pass path=... or set the SAELIB_CONCEPTS "
                         "environment variable to the location of concepts.jsonl")
    docs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not {"text", "concept", "split"} <= row.keys() or row["split"] not in CONCEPT_SPLITS:
            raise ValueError(f"{path}:{line_no}: each row needs 'text', 'concept' and 'split' "
                             f"('train' or 'heldout'), got {row}")
        if split is None or row["split"] == split:
            docs.append(Document(row["text"], "concepts", row["concept"]))
    return docs


# ---- builtin: Python's own documentation and source ---------------------------------------
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")
HEADING_UNDERLINE = re.compile(r"^\s*([*=\-~^\"#+])\1{2,}\s*$")
EMPHASIS = re.compile(r"\*{1,2}(\S[^*\n]*?)\*{1,2}")
REST_ROLE = re.compile(r":[\w:]+:`~?([^`]*)`")
FOOTNOTE = re.compile(r"\s*\[\d+\]")
BULLET = re.compile(r"^[*\-]\s+")


def _clean_paragraph(paragraph: str) -> str | None:
    """One prose paragraph with reST markup removed, or None for headings, tables, code and grammar."""
    lines = paragraph.splitlines()
    if (lines[0][:1].isspace() or any(HEADING_UNDERLINE.match(line) for line in lines)
            or any(marker in paragraph for marker in (">>>", "::=", "+--", "|"))):
        return None
    text = " ".join(line.strip() for line in lines)
    text = REST_ROLE.sub(r"\1", text).replace("`", "")
    text = FOOTNOTE.sub("", EMPHASIS.sub(r"\1", BULLET.sub("", text)))
    text = re.sub(r"::$", ":", text)
    return re.sub(r"\s+", " ", text).strip()


def _is_prose(text: str) -> bool:
    letters = sum(map(str.isalpha, text))
    return len(text) >= 40 and len(text.split()) >= 6 and letters >= 0.6 * len(text.replace(" ", ""))


def _prose_chunks(text: str) -> list[str]:
    """Split documentation text into clean chunks of 1-4 sentences and at most ~400 characters."""
    chunks = []
    for paragraph in re.split(r"\n\s*\n", text):
        cleaned = _clean_paragraph(paragraph.rstrip()) if paragraph.strip() else None
        if not cleaned:
            continue
        current: list[str] = []
        for sentence in SENTENCE_END.split(cleaned):
            if current and (len(current) == MAX_PROSE_SENTENCES
                            or len(" ".join(current)) + 1 + len(sentence) > MAX_PROSE_CHARS):
                chunks.append(" ".join(current))
                current = []
            current.append(sentence)
        chunks.append(" ".join(current))
    return [chunk for chunk in chunks if _is_prose(chunk) and len(chunk) <= 2 * MAX_PROSE_CHARS]


def _stdlib_files() -> list[Path]:
    """Sorted stdlib .py files, walked without importing anything."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in STDLIB_SKIP_DIRS and not d.startswith("config-"))
        files += [Path(folder, name) for name in sorted(names) if name.endswith(".py")]
    return files


def _functions(body: list[ast.stmt]) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Top-level functions and methods (nested functions stay inside their parent)."""
    found = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node)
        elif isinstance(node, ast.ClassDef):
            found += _functions(node.body)
    return found


def _first_line(node: ast.stmt) -> int:
    """1-based first line of a statement, its decorators included."""
    return min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])


def _code_chunks(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """A function's source cut between body statements into pieces of at most 25 lines.

    The first piece holds the signature; a single statement longer than 25 lines keeps its first 25.
    """
    bounds = [_first_line(node) - 1, *(_first_line(stmt) - 1 for stmt in node.body[1:]), node.end_lineno]
    pieces = [lines[a:b] for a, b in zip(bounds, bounds[1:])]
    grouped: list[list[str]] = [[]]
    for piece in pieces:
        if grouped[-1] and len(grouped[-1]) + len(piece) > MAX_CODE_LINES:
            grouped.append([])
        grouped[-1] += piece[:MAX_CODE_LINES]
    chunks = []
    for group in grouped:
        chunk = textwrap.dedent("\n".join(group)).strip("\n").rstrip()
        dedented = not chunk[:1].isspace()  # a string literal at column 0 defeats dedent: skip the piece
        if dedented and sum(bool(line.strip()) for line in chunk.splitlines()) >= 3 and len(chunk) >= 80:
            chunks.append(chunk)
    return chunks


def _evenly_spaced(items: list[str], limit: int) -> list[str]:
    """At most `limit` items spread over the whole list, so every part of the stdlib is represented."""
    if len(items) <= limit:
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


@functools.lru_cache(maxsize=1)
def _stdlib_documents() -> tuple[Document, ...]:
    """pydoc topics, docstrings and source chunks of the stdlib, deduplicated (cached per process)."""
    from pydoc_data.topics import topics

    reference = [chunk for name in sorted(topics) for chunk in _prose_chunks(topics[name])]
    docstrings, code = [], []
    for path in _stdlib_files():
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        owners = [tree, *(n for n in tree.body if isinstance(n, ast.ClassDef)), *_functions(tree.body)]
        for owner in owners:
            docstring = ast.get_docstring(owner)
            if docstring and (owner is tree or not owner.name.startswith("_")):
                docstrings += _prose_chunks(docstring)
        for function in _functions(tree.body):
            code += _code_chunks(lines, function)
    sources = {"pydoc_topics": reference, "docstrings": docstrings, "python_source": code}
    docs = [Document(text, name) for name, texts in sources.items()
            for text in _evenly_spaced(list(dict.fromkeys(texts)), BUILTIN_MAX_PER_SOURCE)]
    return tuple(docs)


def _builtin() -> list[Document]:
    """Starter sentences, the concept probe set (train split) and the stdlib texts."""
    docs = [Document(text, "starter") for text in STARTER_SENTENCES]
    try:
        docs += load_concepts("train")
    except ValueError as err:
        warnings.warn(f"'builtin' corpus without the concept probe set: {err}", stacklevel=3)
    return docs + list(_stdlib_documents())


# ---- files and Hugging Face datasets -------------------------------------------------------
def _read_file(path: Path) -> list[str]:
    if path.suffix == ".txt":
        return [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))]
    if path.suffix == ".jsonl":
        texts = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no} is not valid JSON ({err.msg}); "
                                 "write one object per line") from err
            if not isinstance(row, dict) or "text" not in row:
                fields = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(f"{path}:{line_no} has no 'text' field (found: {fields}); "
                                 "each line must be an object like {\"text\": \"...\"}")
            texts.append(str(row["text"]))
        return texts
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise ValueError(f"{path} has no 'text' column (columns found: {reader.fieldnames or []}); "
                             "rename the column that holds the documents to 'text'")
        return [row["text"] or "" for row in reader]


def _from_path(path: Path) -> list[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
        if not files:
            raise ValueError(f"No {'/'.join(FILE_SUFFIXES)} files under folder {path}; "
                             "add some or point to another folder")
    elif path.suffix in FILE_SUFFIXES:
        files = [path]
    else:
        raise ValueError(f"Unsupported file type {path.suffix!r} for {path}: use a {'/'.join(FILE_SUFFIXES)} file")
    docs = [Document(text.strip(), str(file)) for file in files for text in _read_file(file) if text.strip()]
    if not docs:
        raise ValueError(f"No texts found in {path}: .txt files need paragraphs separated by blank lines, "
                         ".jsonl lines a non-empty 'text' field, .csv files a non-empty 'text' column")
    return docs


HF_SPEC = re.compile(r"hf:(?P<name>[^:]+)(?::(?P<split>[^:\[]+(?:\[[^\]]*\])?))?(?::(?P<column>[^:]+))?")


def _from_hf(spec: str) -> list[Document]:
    """A Hugging Face dataset; split may slice, e.g. "hf:wikitext:train[:2000]:text"."""
    match = HF_SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"Bad Hugging Face spec {spec!r}: use 'hf:<dataset>[:<split>[:<column>]]'")
    name, split, column = match["name"], match["split"] or "train", match["column"] or "text"
    unavailable = (f"Cannot load {spec!r}: the Hugging Face `datasets` package or the network is unavailable "
                   "(pip install datasets, check the connection); the 'builtin' corpus works offline")
    try:
        import datasets
    except ImportError as err:
        raise ValueError(unavailable) from err
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # hub/network/file errors all mean: not loadable here
        raise ValueError(f"{unavailable}. Error: {err}") from err
    if column not in dataset.column_names:
        raise ValueError(f"Dataset {name!r} has no column {column!r} (columns: {dataset.column_names}); "
                         f"use 'hf:{name}:{split}:<column>'")
    docs = [Document(str(text).strip(), f"hf:{name}") for text in dataset[column] if text and str(text).strip()]
    if not docs:
        raise ValueError(f"Dataset {name!r} split {split!r} column {column!r} has no non-empty texts")
    return docs


# ---- spec dispatch and sampling ------------------------------------------------------------
def _load_one(spec: str | os.PathLike) -> list[Document]:
    if isinstance(spec, str):
        if spec == "builtin":
            return _builtin()
        if spec == "concepts" or spec.startswith("concepts:"):
            split = spec.partition(":")[2] or None
            if split not in (None, *CONCEPT_SPLITS):
                raise ValueError(f"Unknown concept split in {spec!r}: "
                                 "use 'concepts', 'concepts:train' or 'concepts:heldout'")
            return load_concepts(split)
        if spec.startswith("hf:"):
            return _from_hf(spec)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"Unknown corpus spec {str(spec)!r} (no such file or folder either); "
                         f"valid forms: {SPEC_FORMS}")
    return _from_path(path)


def _split_evenly(sizes: list[int], budget: int) -> list[int]:
    """Equal shares of `budget`; a group smaller than its share is taken whole and its rest goes to the others."""
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
    """`n_texts` documents, an equal share per source; the probe set is kept whole when it fits in 2/3 of them."""
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
        quotas.update(zip(rest, _split_evenly([len(groups[name]) for name in rest], n_texts - quotas["probe"])))
    rng = random.Random(seed)
    chosen = sorted(i for name, ids in groups.items() for i in rng.sample(ids, quotas[name]))
    return [docs[i] for i in chosen]


def load_corpus(spec: str | os.PathLike | Sequence[str | os.PathLike] = "builtin", n_texts: int | None = None,
                seed: int = 0) -> list[Document]:
    """Documents for `spec` (see the module docstring), deduplicated; `n_texts` samples deterministically by `seed`."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise ValueError(f"Empty list of corpus specs; valid forms: {SPEC_FORMS}")
    if n_texts is not None and (not isinstance(n_texts, int) or n_texts < 1):
        raise ValueError(f"n_texts must be a positive integer or None, got {n_texts!r}")
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
