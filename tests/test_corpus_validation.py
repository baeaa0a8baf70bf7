"""Corpus validation at index time: every bad row is named by file:line, the CLI prints it without a traceback and
exits non-zero, and nothing is left behind; repairable or skippable rows are counted and reported."""

import json
import logging
import os

import pytest

from trl_search.cli import main
from trl_search.retrievers import BM25Retriever, load_retriever
from trl_search.retrievers.corpus import Corpus, CorpusError


GOOD = [
    json.dumps({"id": str(i), "contents": f'"Town {i}"\nTown {i} makes copper pots number {i}.'}) for i in range(3)
]


def write_corpus(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines))
    return path


def run_index(corpus, out, *extra):
    return main(
        ["index", "--corpus", str(corpus), "--out", str(out), "--engine", "rank_bm25", "--no-progress", *extra]
    )


# (name, the bad line placed as line 3 of the file, text the message must contain)
REJECTED = [
    ("invalid_utf8", b'{"id": "x", "contents": "caf\xe9 au lait"}', "not valid UTF-8"),
    ("lone_surrogate", '{"id": "x", "contents": "broken \\ud800 text"}', "lone surrogate"),
    ("missing_id", '{"contents": "no id here"}', "has no 'id'"),
    ("null_id", '{"id": null, "contents": "null id"}', "'id' is null"),
    ("float_id", '{"id": 1.5, "contents": "float id"}', "ids must be non-empty strings"),
    ("list_id", '{"id": ["a"], "contents": "list id"}', "ids must be non-empty strings"),
    ("empty_id", '{"id": " ", "contents": "blank id"}', "'id' is empty"),
    ("duplicate_id", '{"id": "1", "contents": "again"}', "duplicate id '1' (first at"),
    ("not_an_object", '["id", "contents"]', "must be a JSON object"),
    ("no_contents", '{"id": "x", "body": "wrong key"}', "neither 'contents' nor 'text'"),
    ("bad_json", '{"id": "x", "contents": ', "not valid JSON"),
]


@pytest.mark.parametrize("bad_line, expected", [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED])
def test_rejected_rows_name_file_and_line_without_traceback(tmp_path, capsys, bad_line, expected):
    corpus = write_corpus(tmp_path / "corpus.jsonl", [GOOD[0], GOOD[1], bad_line, GOOD[2]])
    assert run_index(corpus, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert f"{corpus}:3" in error and expected in error
    assert "Traceback" not in error
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl"]  # no index, no staging or work folder


def test_bad_text_can_be_repaired_and_is_counted(tmp_path, capsys):
    corpus = write_corpus(
        tmp_path / "corpus.jsonl",
        [
            GOOD[0],
            '{"id": "s", "contents": "\\"Sur\\"\\nbroken \\ud800 surrogate"}',
            b'{"id": "b", "contents": "bad \xff byte"}',
        ],
    )
    assert run_index(corpus, tmp_path / "out", "--on-bad-text", "replace") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["corpus"]["repaired_text"] == 2 and summary["corpus"]["passages"] == 3
    retriever = load_retriever(tmp_path / "out")
    contents = {p.id: p.contents for hits in retriever.search(["surrogate", "byte"], k=1) for p in hits}
    assert contents == {"s": '"Sur"\nbroken \ufffd surrogate', "b": "bad \ufffd byte"}
    for passage_contents in contents.values():
        passage_contents.encode("utf-8")  # what failed every request before
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["corpus"]["repaired_text"] == 2


def test_duplicates_kept_when_allowed(tmp_path, capsys, caplog):
    corpus = write_corpus(tmp_path / "corpus.jsonl", [*GOOD, '{"id": "1", "contents": "second row with id one"}'])
    with caplog.at_level(logging.WARNING, logger="trl_search"):
        assert run_index(corpus, tmp_path / "out", "--allow-duplicate-ids") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["corpus"]["duplicate_ids"] == 1
    assert f"1 rows repeat an id already used (first: {corpus}:4)" in caplog.text


def test_empty_and_non_string_contents_are_skipped_with_a_warning(tmp_path, caplog):
    corpus = write_corpus(
        tmp_path / "corpus.jsonl",
        [
            GOOD[0],
            '{"id": "e", "contents": ""}',
            '{"id": "w", "contents": "  \\n "}',
            '{"id": "n", "contents": null}',
            '{"id": "i", "contents": 42}',
            '{"id": "t", "title": "T", "text": ["not", "a", "string"]}',
            GOOD[1],
        ],
    )
    with caplog.at_level(logging.WARNING, logger="trl_search"):
        retriever = BM25Retriever.build(corpus)
    assert len(retriever) == 2
    assert retriever.corpus_stats == {
        "passages": 2,
        "skipped_empty": 2,
        "skipped_non_string": 3,
        "repaired_text": 0,
        "duplicate_ids": 0,
    }
    assert f"2 rows with empty contents were skipped (first: {corpus}:2, {corpus}:3)" in caplog.text
    assert f"{corpus}:4" in caplog.text and "not a string" in caplog.text
    # Nothing left: an error naming the problem, not an empty index.
    empty = write_corpus(tmp_path / "empty.jsonl", ['{"id": "e", "contents": ""}'])
    with pytest.raises(ValueError, match="corpus is empty"):
        BM25Retriever.build(empty)


def test_empty_corpus_is_a_clear_cli_error(tmp_path, capsys):
    empty = write_corpus(tmp_path / "empty.jsonl", ['{"id": "e", "contents": "  "}'])
    assert run_index(empty, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "The corpus is empty" in error and "Traceback" not in error
    assert sorted(os.listdir(tmp_path)) == ["empty.jsonl"]


def test_in_memory_rows_are_checked_too():
    with pytest.raises(CorpusError, match="corpus item 1: duplicate id 'a' \\(first at corpus item 0\\)"):
        BM25Retriever.build([{"id": "a", "contents": "one"}, {"id": "a", "contents": "two"}])
    with pytest.raises(CorpusError, match="corpus item 0: 'contents' holds a lone surrogate"):
        list(Corpus([{"id": "a", "contents": "x\udc80"}]))
    repaired = Corpus([{"id": 7, "contents": "x\udc80"}], on_bad_text="replace")
    assert [(p.id, p.contents) for p in repaired] == [("7", "x\ufffd")] and repaired.stats["repaired_text"] == 1
    with pytest.raises(ValueError, match="on_bad_text must be one of"):
        Corpus([], on_bad_text="ignore")
