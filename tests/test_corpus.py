"""Corpus sources: builtin mix, concept probe set, local files, HF errors, sampling."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from saelib.corpus import STARTER_SENTENCES, Document, concepts_path, corpus_stats, load_concepts, load_corpus
from saelib.errors import BadArgument, BadFile
from saelib.stdlib_texts import prose_chunks


@pytest.fixture(scope="module")
def builtin():
    return load_corpus("builtin")


def test_builtin_is_large_diverse_and_unique(builtin):
    assert len(builtin) >= 2000
    counts = Counter(d.source for d in builtin)
    assert {"pydoc_topics", "docstrings", "python_source", "concepts", "starter"} <= counts.keys()
    assert all(counts[s] >= 300 for s in ("pydoc_topics", "docstrings", "python_source"))
    texts = [d.text for d in builtin]
    assert len(set(texts)) == len(texts)
    assert all(t.strip() == t and len(t) >= 20 for t in texts)
    assert {d.text for d in builtin if d.source == "starter"} == set(STARTER_SENTENCES)
    assert all(d.concept for d in builtin if d.source == "concepts")
    assert all(d.concept is None for d in builtin if d.source != "concepts")
    # the probe set in builtin is exactly the train split: held-out sentences stay unseen
    assert {d.text for d in builtin if d.source == "concepts"} == {d.text for d in load_concepts("train")}


def test_builtin_texts_are_clean(builtin):
    code = [d.text for d in builtin if d.source == "python_source"]
    assert all(len(t.splitlines()) <= 25 for t in code)
    assert sum(t.startswith(("def ", "async def ", "@")) for t in code) > 0.5 * len(code)
    prose = [d.text for d in builtin if d.source in ("pydoc_topics", "docstrings")]
    assert all(len(t) <= 800 and "\n" not in t for t in prose)
    assert not any("****" in t or "+---" in t or "::=" in t or ">>>" in t for t in prose)
    assert sum("``" in t or ":func:" in t for t in prose) == 0


def test_prose_chunks_strip_markup_and_split():
    text = (
        "The loop\n********\n\nThe *iterable* is evaluated once [1]. It yields items. Then more.\n"
        "And more. And the fifth sentence ends here.\n\n   for x in y:\n       pass\n\n"
        "+----+----+\n| a  | b  |\n+----+----+\n\n* A bullet point that is long enough to be kept here."
    )
    chunks = prose_chunks(text)
    assert chunks == [
        "The iterable is evaluated once. It yields items. Then more. And more.",
        "A bullet point that is long enough to be kept here.",
    ]


def test_sampling_is_deterministic_stratified_and_seeded():
    a = load_corpus("builtin", n_texts=400, seed=0)
    assert a == load_corpus("builtin", n_texts=400, seed=0)
    b = load_corpus("builtin", n_texts=400, seed=1)
    assert len(a) == len(b) == 400 and a != b
    counts = Counter(d.source for d in a)
    assert all(counts[s] >= 80 for s in ("pydoc_topics", "docstrings", "python_source"))
    assert counts["concepts"] + counts["starter"] >= 80


def test_sampling_keeps_probe_set_whole_when_it_fits():
    probe = {d.text for d in load_concepts("train")} | set(STARTER_SENTENCES)
    docs = load_corpus("builtin", n_texts=2500, seed=3)
    assert len(docs) == 2500
    assert probe <= {d.text for d in docs}
    assert len({d.source for d in docs}) >= 5
    assert load_corpus("builtin", n_texts=10**6) == load_corpus("builtin")


def test_concepts_file_shape():
    assert concepts_path().name == "concepts.jsonl"
    rows = [json.loads(line) for line in concepts_path().read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"text", "concept", "split"} for r in rows)
    per_concept = Counter(r["concept"] for r in rows)
    assert len(per_concept) >= 30 and min(per_concept.values()) >= 40
    splits = Counter((r["concept"], r["split"]) for r in rows)
    assert all(splits[c, "train"] > splits[c, "heldout"] > 0 for c in per_concept)
    assert 0.6 < sum(r["split"] == "train" for r in rows) / len(rows) < 0.8
    texts = [r["text"].strip().lower() for r in rows]
    assert len(set(texts)) == len(texts)
    assert {"french", "german", "spanish", "negation", "questions", "python_code"} <= per_concept.keys()


def test_concept_specs_match_load_concepts():
    train, heldout = load_concepts("train"), load_concepts("heldout")
    assert load_corpus("concepts:train") == train
    assert load_corpus("concepts:heldout") == heldout
    assert len(load_corpus("concepts")) == len(train) + len(heldout) == len(load_concepts())
    assert all(isinstance(d, Document) and d.source == "concepts" for d in heldout)
    with pytest.raises(BadArgument, match="concepts:heldout"):
        load_corpus("concepts:test")
    with pytest.raises(BadArgument, match="'train' or 'heldout'"):
        load_concepts("test")


def test_concepts_env_override(tmp_path, monkeypatch):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"text": "A red apple.", "concept": "fruit", "split": "train"})
        + "\n"
        + json.dumps({"text": "A green pear.", "concept": "fruit", "split": "heldout"})
        + "\n"
    )
    monkeypatch.setenv("SAELIB_CONCEPTS", str(path))
    assert load_concepts("heldout") == [Document("A green pear.", "concepts", "fruit")]
    monkeypatch.setenv("SAELIB_CONCEPTS", str(tmp_path / "missing.jsonl"))
    with pytest.raises(BadFile, match="SAELIB_CONCEPTS"):
        load_concepts()
    with pytest.warns(UserWarning, match="probe set"):
        docs = load_corpus("builtin")
    assert "concepts" not in {d.source for d in docs} and len(docs) >= 2000


def test_malformed_concept_lines_name_file_and_line(tmp_path, monkeypatch):
    path = tmp_path / "mine.jsonl"
    good = json.dumps({"text": "A red apple.", "concept": "fruit", "split": "train"})
    path.write_text(good + "\n" + json.dumps({"text": "A pear.", "concept": "fruit", "split": "test"}) + "\n")
    with pytest.raises(BadFile, match="mine.jsonl:2: 'split' must be 'train' or 'heldout', got 'test'"):
        load_concepts(path=path)
    path.write_text(good + "\n\n[1, 2]\n")
    with pytest.raises(
        BadFile, match=r"mine.jsonl:3 has no 'text' / 'concept' / 'split' field \(found: list\)"
    ):
        load_concepts(path=path)
    path.write_text(good + "\n{oops\n")
    monkeypatch.setenv("SAELIB_CONCEPTS", str(path))
    with pytest.warns(UserWarning, match="mine.jsonl:2 is not valid JSON"):
        assert "concepts" not in {d.source for d in load_corpus("builtin")}


def test_txt_jsonl_csv_and_folder(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(
        "First paragraph\nstill first.\n\n\nSecond paragraph.\n\n", encoding="utf-8"
    )
    (folder / "sub" / "b.jsonl").write_text(
        '{"text": "From jsonl.", "id": 1}\n\n{"text": "Second paragraph."}\n'
    )
    (folder / "c.csv").write_text('id,text\n1,"From csv, with a comma."\n2,\n', encoding="utf-8")
    (folder / "ignored.md").write_text("Not a corpus file.")

    assert [d.text for d in load_corpus(folder / "a.txt")] == [
        "First paragraph\nstill first.",
        "Second paragraph.",
    ]
    assert [d.text for d in load_corpus(str(folder / "c.csv"))] == ["From csv, with a comma."]
    docs = load_corpus(folder)
    # files sorted by path: a.txt, c.csv, sub/b.jsonl; the duplicate paragraph is kept once
    assert [d.text for d in docs] == [
        "First paragraph\nstill first.",
        "Second paragraph.",
        "From csv, with a comma.",
        "From jsonl.",
    ]
    assert docs[-1].source.endswith("b.jsonl") and docs[0].concept is None
    both = load_corpus([folder / "c.csv", "concepts:heldout"])
    assert both[0].text == "From csv, with a comma." and len(both) == 1 + len(load_concepts("heldout"))
    assert len(load_corpus(folder, n_texts=2, seed=0)) == 2


def test_empty_inputs_name_the_fix(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(BadFile, match="No texts found.*paragraphs separated by blank lines"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BadFile, match=r"No \.txt/\.jsonl/\.csv files under folder"):
        load_corpus(tmp_path / "folder")
    with pytest.raises(BadArgument, match="Empty list"):
        load_corpus([])


def test_bad_files_give_clear_errors(tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("id,body\n1,hello there\n")
    with pytest.raises(BadFile, match=r"no 'text' column \(columns found: \['id', 'body'\]\)"):
        load_corpus(csv_path)
    jsonl_path = tmp_path / "data.jsonl"
    jsonl_path.write_text('{"body": "hello"}\n')
    with pytest.raises(BadFile, match=r"data.jsonl:1 has no 'text' field \(found: \['body'\]\)"):
        load_corpus(jsonl_path)
    jsonl_path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(BadFile, match=r"data.jsonl:2 is not valid JSON"):
        load_corpus(jsonl_path)
    other = tmp_path / "notes.md"
    other.write_text("hello")
    with pytest.raises(BadArgument, match="Unsupported file type '.md'"):
        load_corpus(other)


def test_unknown_spec_lists_valid_forms():
    with pytest.raises(BadArgument, match="Unknown corpus spec 'wikipedia'.*'builtin'.*hf:<dataset>"):
        load_corpus("wikipedia")
    for bad in (0, -5, 2.5):
        with pytest.raises(BadArgument, match="n_texts"):
            load_corpus("concepts", n_texts=bad)


def test_hf_without_datasets_package_says_builtin_works_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(BadArgument, match="datasets.*network is unavailable.*'builtin' corpus works offline"):
        load_corpus("hf:wikitext:train[:100]:text")
    with pytest.raises(BadArgument, match="hf:<dataset>"):
        load_corpus("hf:")


def test_corpus_stats():
    docs = [Document("abcd", "x"), Document("ab", "x", "animals"), Document("abcdef", "y", "animals")]
    assert corpus_stats(docs) == {
        "n_texts": 3,
        "mean_chars": 4.0,
        "sources": {"x": 2, "y": 1},
        "concepts": {"animals": 2},
    }
    assert corpus_stats([])["n_texts"] == 0
