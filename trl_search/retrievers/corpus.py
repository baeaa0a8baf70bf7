"""Reading a corpus for indexing: JSONL rows or an iterable, checked row by row with `file:line` in every error."""

from __future__ import annotations

import json
import logging
import os
import re
from array import array
from collections.abc import Iterable, Iterator

import numpy as np

from .base import Passage, make_contents


logger = logging.getLogger(__name__)

BAD_TEXT_POLICIES = ("error", "replace")
# Lone UTF-16 surrogates: JSON can spell them (`"\ud800"`) but UTF-8 cannot encode them, so every later step that
# encodes the passage (the server's response, a tokenizer) would fail on them.
_SURROGATE = re.compile("[\ud800-\udfff]")
_REPLACEMENT = "\ufffd"
_EXAMPLES = 5  # locations quoted per warning


class CorpusError(ValueError):
    """A corpus row that cannot be indexed. The message starts with its location (`path:line`) and names the fix.

    Example:
        >>> list(Corpus([{"contents": "no id"}]))  # doctest: +SKIP
        CorpusError: corpus item 0: the row has no 'id'. ...
    """


class Corpus:
    """The rows of a corpus as `Passage`s, validated as they stream.

    Accepts a JSONL path (Search-R1's `{"id", "contents"}` rows, kept verbatim, or `{"id", "title", "text"}` rows,
    given `contents = make_contents(title, text)`) or an iterable of such dicts or `Passage`s.

    Rejected with a `CorpusError` naming the row: bytes that are not UTF-8, lone surrogates (unless
    `on_bad_text="replace"`, which puts U+FFFD in their place and counts the rows), rows that are not JSON objects,
    missing, null, empty or non-string ids (integers are accepted as their decimal string), and duplicate ids (unless
    `allow_duplicate_ids=True`, which counts them). Rows whose contents are empty or not a string are skipped with a
    warning. `stats` counts all of it once the stream is exhausted; indexes record it in their manifest.

    Example:
        >>> corpus = Corpus([{"id": 1, "contents": '"Paris"\\nParis is in France.'}, {"id": 2, "contents": " "}])
        >>> [p.id for p in corpus], corpus.stats["skipped_empty"]
        (['1'], 1)
    """

    def __init__(
        self,
        source: str | os.PathLike | Iterable[dict | Passage],
        *,
        on_bad_text: str = "error",
        allow_duplicate_ids: bool = False,
    ):
        if on_bad_text not in BAD_TEXT_POLICIES:
            raise ValueError(f"on_bad_text must be one of {BAD_TEXT_POLICIES}; got {on_bad_text!r}.")
        if isinstance(source, (str, os.PathLike)):
            source = os.fspath(source)
            if not os.path.isfile(source):
                raise FileNotFoundError(
                    f"Corpus file not found: {source}. Pass a JSONL file with one passage per line."
                )
        self.source = source
        self.on_bad_text = on_bad_text
        self.allow_duplicate_ids = allow_duplicate_ids
        self.stats: dict[str, int] = {}
        self._examples: dict[str, list[str]] = {}

    @property
    def path(self) -> str | None:
        return self.source if isinstance(self.source, str) else None

    def __iter__(self) -> Iterator[Passage]:
        for passage_id, contents, _ in self.entries():
            yield Passage.from_contents(passage_id, contents)

    def entries(self) -> Iterator[tuple[str, str, bytes | None]]:
        """The rows as `(id, contents, raw)`, without building `Passage`s (what index builds read). `raw` is the
        row's line as read when it is already a canonical `{"id": str, "contents": str}` row (so a store can keep it
        as is), else None."""
        self.stats = dict.fromkeys(("passages", "skipped_empty", "skipped_non_string", "repaired_text"), 0)
        self.stats["duplicate_ids"] = 0
        self._examples = {}
        if self.path is not None:
            yield from self._check_ids(self._rows_of_file(self.path))
        else:
            yield from self._check_ids(self._rows_of_iterable(self.source))
        self._warn()

    # --- reading -----------------------------------------------------------------------------------------------

    def _rows_of_file(self, path: str) -> Iterator[tuple[str, str, str, bytes | None]]:
        with open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                where = f"{path}:{line_number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    line, raw = self._bad_bytes(raw, error, where), None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CorpusError(f"{where}: not valid JSON ({error}). Fix or remove the line.") from None
                # Lone surrogates can only arrive as `\uD8xx`-style escapes: look for them only then.
                checked = raw is None or b"\\ud" in raw or b"\\uD" in raw
                entry = self._entry(record, where, check_text=checked)
                if entry is None:
                    continue
                passage_id, contents, canonical = entry
                if canonical and raw is not None:
                    raw = raw if raw.endswith(b"\n") else raw + b"\n"
                else:
                    raw = None
                yield where, passage_id, contents, raw

    def _rows_of_iterable(self, rows: Iterable[dict | Passage]) -> Iterator[tuple[str, str, str, None]]:
        for index, record in enumerate(rows):
            where = f"corpus item {index}"
            if isinstance(record, Passage):
                record = {"id": record.id, "contents": record.contents}
            entry = self._entry(record, where, check_text=True)
            if entry is not None:
                yield where, entry[0], entry[1], None

    def _bad_bytes(self, raw: bytes, error: UnicodeDecodeError, where: str) -> str:
        if self.on_bad_text == "error":
            raise CorpusError(
                f"{where}: byte {error.start} is not valid UTF-8 ({raw[error.start : error.start + 4]!r}). Save the "
                "corpus as UTF-8, or pass --on-bad-text replace (on_bad_text='replace') to replace invalid bytes "
                "with U+FFFD."
            ) from None
        self._count("repaired_text", where)
        return raw.decode("utf-8", errors="replace")

    def _entry(self, record, where: str, check_text: bool) -> tuple[str, str, bool] | None:
        """(id, contents, whether the row is canonical and unchanged), or None for a skipped row."""
        if not isinstance(record, dict):
            raise CorpusError(
                f"{where}: a row must be a JSON object with 'id' and 'contents' (or 'title' and 'text'); got "
                f"{type(record).__name__} {record!r:.80}."
            )
        passage_id = self._id(record, where)
        if "contents" in record:
            contents = record["contents"]
            if not isinstance(contents, str):
                return self._skip("skipped_non_string", where)
        elif "text" in record:
            title, text = record.get("title", ""), record["text"]
            if not isinstance(title, str) or not isinstance(text, str):
                return self._skip("skipped_non_string", where)
            contents = make_contents(title, text) if title or text.strip() else text
        else:
            raise CorpusError(
                f"{where}: the row has neither 'contents' nor 'text' (keys: {sorted(record)[:8]}). Give each row "
                "'contents' (Search-R1's format: the title on the first line) or 'title' and 'text'."
            )
        if not contents.strip():
            return self._skip("skipped_empty", where)
        canonical = len(record) == 2 and "contents" in record and type(record["id"]) is str
        if check_text:
            repaired = self._repair(contents, where, "contents"), self._repair(passage_id, where, "id")
            canonical = canonical and repaired == (contents, passage_id)
            contents, passage_id = repaired
        return passage_id, contents, canonical

    @staticmethod
    def _id(record: dict, where: str) -> str:
        if "id" not in record:
            raise CorpusError(f"{where}: the row has no 'id'. Give every row a unique string id.")
        value = record["id"]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise CorpusError(
                f"{where}: 'id' is {json.dumps(value)[:40]} ({type(value).__name__}); ids must be non-empty strings "
                "(or integers). Give every row a unique string id."
            )
        value = str(value)
        if not value.strip():
            raise CorpusError(f"{where}: 'id' is empty. Give every row a unique, non-empty string id.")
        return value

    def _repair(self, text: str, where: str, field: str) -> str:
        match = _SURROGATE.search(text)
        if match is None:
            return text
        if self.on_bad_text == "error":
            raise CorpusError(
                f"{where}: {field!r} holds a lone surrogate {match.group().encode('unicode_escape').decode()!r} at "
                f"character {match.start()}, which is not valid Unicode (every request that returned this passage "
                "would fail). Fix the row, or pass --on-bad-text replace (on_bad_text='replace') to replace it "
                "with U+FFFD."
            )
        self._count("repaired_text", where)
        return _SURROGATE.sub(_REPLACEMENT, text)

    # --- bookkeeping -------------------------------------------------------------------------------------------

    def _count(self, key: str, where: str) -> None:
        self.stats[key] += 1
        examples = self._examples.setdefault(key, [])
        if len(examples) < _EXAMPLES and (not examples or examples[-1] != where):
            examples.append(where)

    def _skip(self, key: str, where: str) -> None:
        self._count(key, where)
        return None

    def _check_ids(self, rows: Iterator[tuple[str, str, str, bytes | None]]) -> Iterator[tuple[str, str, bytes]]:
        """Yields the entries, then raises on duplicate ids; a file is checked via 8-byte hashes, not a set of ids,
        and read a second time only to name the duplicates."""
        if self.path is None:
            first_seen: dict[str, str] = {}
            for where, passage_id, contents, raw in rows:
                previous = first_seen.setdefault(passage_id, where)
                if previous != where:
                    self._duplicate(passage_id, where, previous)
                self.stats["passages"] += 1
                yield passage_id, contents, raw
            return
        hashes = array("q")
        for _, passage_id, contents, raw in rows:
            hashes.append(hash(passage_id))
            self.stats["passages"] += 1
            yield passage_id, contents, raw
        ordered = np.sort(np.frombuffer(hashes, dtype=np.int64))
        candidates = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        if not candidates:
            return
        first_seen, counted = {}, dict(self.stats)
        for where, passage_id, _, _ in self._rows_of_file(self.path):
            if hash(passage_id) in candidates:
                previous = first_seen.setdefault(passage_id, where)
                if previous != where:
                    self._duplicate(passage_id, where, previous)
        self.stats = {**counted, "duplicate_ids": self.stats["duplicate_ids"]}  # the second read counts nothing else

    def _duplicate(self, passage_id: str, where: str, previous: str) -> None:
        if not self.allow_duplicate_ids:
            raise CorpusError(
                f"{where}: duplicate id {passage_id!r} (first at {previous}). Ids must be unique so that a hit names "
                "one passage: fix the corpus, or pass --allow-duplicate-ids (allow_duplicate_ids=True) to keep both."
            )
        self._count("duplicate_ids", where)

    def _warn(self) -> None:
        messages = {
            "skipped_empty": "rows with empty contents were skipped",
            "skipped_non_string": "rows whose contents, title or text is not a string were skipped",
            "repaired_text": "rows had invalid text replaced with U+FFFD",
            "duplicate_ids": "rows repeat an id already used",
        }
        for key, message in messages.items():
            if self.stats.get(key):
                examples = ", ".join(self._examples.get(key, []))
                logger.warning("%d %s (first: %s).", self.stats[key], message, examples)


def iter_corpus(corpus: str | os.PathLike | Iterable[dict | Passage] | Corpus) -> Iterator[Passage]:
    """Streams validated `Passage`s from a JSONL path, an iterable of rows or a `Corpus` (see `Corpus`).

    Example:
        >>> [p.contents for p in iter_corpus([{"id": "0", "title": "Paris", "text": "Paris is in France."}])]
        ['"Paris"\\nParis is in France.']
    """
    return iter(corpus if isinstance(corpus, Corpus) else Corpus(corpus))
