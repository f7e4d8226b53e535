"""The 'builtin' corpus's bulk, made from what every Python install carries: the language reference
(pydoc topics) and stdlib docstrings cut into clean prose chunks, and stdlib functions cut into code chunks.
The stdlib's files are read and parsed with `ast`, never imported."""

from __future__ import annotations

import ast
import functools
import os
import re
import sysconfig
import textwrap
from pathlib import Path

BUILTIN_MAX_PER_SOURCE = 1500  # the stdlib has ~15k functions; cap each stdlib source so none drowns the rest
MAX_PROSE_CHARS = 400
MAX_PROSE_SENTENCES = 4
MAX_CODE_LINES = 25
# stdlib folders left out: tests, vendored code, codec tables, GUI demos and the pydoc topics module itself
STDLIB_SKIP_DIRS = {
    "site-packages",
    "test",
    "tests",
    "idle_test",
    "__pycache__",
    "encodings",
    "pydoc_data",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "idlelib",
    "tkinter",
    "distutils",
    "__phello__",
}

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")
HEADING_UNDERLINE = re.compile(r"^\s*([*=\-~^\"#+])\1{2,}\s*$")
EMPHASIS = re.compile(r"\*{1,2}(\S[^*\n]*?)\*{1,2}")
REST_ROLE = re.compile(r":[\w:]+:`~?([^`]*)`")
FOOTNOTE = re.compile(r"\s*\[\d+\]")
BULLET = re.compile(r"^[*\-]\s+")


def _clean_paragraph(paragraph: str) -> str | None:
    """One prose paragraph with reST markup removed, or None for headings, tables, code and grammar."""
    lines = paragraph.splitlines()
    if (
        lines[0][:1].isspace()
        or any(HEADING_UNDERLINE.match(line) for line in lines)
        or any(marker in paragraph for marker in (">>>", "::=", "+--", "|"))
    ):
        return None
    text = " ".join(line.strip() for line in lines)
    text = REST_ROLE.sub(r"\1", text).replace("`", "")
    text = FOOTNOTE.sub("", EMPHASIS.sub(r"\1", BULLET.sub("", text)))
    text = re.sub(r"::$", ":", text)
    return re.sub(r"\s+", " ", text).strip()


def _is_prose(text: str) -> bool:
    letters = sum(map(str.isalpha, text))
    return len(text) >= 40 and len(text.split()) >= 6 and letters >= 0.6 * len(text.replace(" ", ""))


def prose_chunks(text: str) -> list[str]:
    """Split documentation text into clean chunks of 1-4 sentences and at most ~400 characters."""
    chunks = []
    for paragraph in re.split(r"\n\s*\n", text):
        cleaned = _clean_paragraph(paragraph.rstrip()) if paragraph.strip() else None
        if not cleaned:
            continue
        current: list[str] = []
        for sentence in SENTENCE_END.split(cleaned):
            if current and (
                len(current) == MAX_PROSE_SENTENCES
                or len(" ".join(current)) + 1 + len(sentence) > MAX_PROSE_CHARS
            ):
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
        subfolders[:] = sorted(
            d for d in subfolders if d not in STDLIB_SKIP_DIRS and not d.startswith("config-")
        )
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
def stdlib_texts() -> dict[str, tuple[str, ...]]:
    """Texts per source (pydoc_topics, docstrings, python_source), deduplicated; cached per process."""
    from pydoc_data.topics import topics

    reference = [chunk for name in sorted(topics) for chunk in prose_chunks(topics[name])]
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
                docstrings += prose_chunks(docstring)
        for function in _functions(tree.body):
            code += _code_chunks(lines, function)
    sources = {"pydoc_topics": reference, "docstrings": docstrings, "python_source": code}
    return {
        name: tuple(_evenly_spaced(list(dict.fromkeys(texts)), BUILTIN_MAX_PER_SOURCE))
        for name, texts in sources.items()
    }
