"""The batch-first retriever interface shared by every backend."""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass


def make_contents(title: str, text: str) -> str:
    """The `contents` string of a `{"id", "title", "text"}` corpus row, in Search-R1's wiki-18 layout: the title in
    double quotes on the first line, then the text. Built once, at index time; stored and served verbatim after that.

    Example:
        >>> make_contents("Paris", "Paris is the capital of France.")
        '"Paris"\\nParis is the capital of France.'
    """
    return f'"{title}"\n{text}'


def split_contents(contents: str) -> tuple[str, str]:
    """Splits `contents` the way Search-R1 reads it: the first line is the title (kept as stored, quotes included),
    the remaining lines joined with newlines are the text.

    Example:
        >>> split_contents('"Paris"\\nParis is the capital\\nof France.')
        ('"Paris"', 'Paris is the capital\\nof France.')
    """
    title, _, text = contents.partition("\n")
    return title, text


def _display_title(first_line: str) -> str:
    title = first_line.strip()
    return title[1:-1] if len(title) >= 2 and title[0] == title[-1] == '"' else title


@dataclass(frozen=True)
class Passage:
    """One retrieved passage.

    `contents` is the corpus row's string exactly as stored (Search-R1's format: title on the first line). It is
    what observations render, what dense indexes encode and what the server returns. `title` (without the quotes of
    a wiki-18 title line) and `text` are derived from it for display and for lexical indexing; a passage made from
    a title and a text alone gets `make_contents(title, text)`.

    Example:
        >>> Passage(id="12", title="Paris", text="Paris is the capital of France.", score=3.2).contents
        '"Paris"\\nParis is the capital of France.'
    """

    id: str
    title: str
    text: str
    score: float = 0.0
    contents: str | None = None

    def __post_init__(self):
        if self.contents is None:
            object.__setattr__(self, "contents", make_contents(self.title, self.text))

    @classmethod
    def from_contents(cls, id: str, contents: str, score: float = 0.0) -> Passage:
        """A passage from a verbatim `contents` string (title and text derived as Search-R1 does).

        Example:
            >>> Passage.from_contents("1", '"Paris"\\nParis is in France.').title
            'Paris'
        """
        first_line, text = split_contents(contents)
        return cls(id=id, title=_display_title(first_line), text=text, score=score, contents=contents)

    def with_score(self, score: float) -> Passage:
        """The same passage carrying another score."""
        return dataclasses.replace(self, score=float(score))

    def to_dict(self) -> dict:
        return asdict(self)


def passage_from_record(record: dict | Passage, score: float = 0.0) -> Passage:
    """Turns a corpus row into a `Passage`.

    Accepts Search-R1's `{"id", "contents"}` rows (kept verbatim; the first line of `contents` is the title) and
    `{"id", "title", "text"}` rows (given `contents = make_contents(title, text)`).

    Example:
        >>> passage_from_record({"id": 1, "contents": '"Paris"\\nParis is the capital of France.'}).title
        'Paris'
    """
    if isinstance(record, Passage):
        return record
    if not isinstance(record, dict) or "id" not in record:
        raise ValueError(
            f"A corpus row must be a dict with an 'id' and either 'contents' or 'title'+'text'; got {record!r:.200}"
        )
    if isinstance(record.get("contents"), str):
        return Passage.from_contents(str(record["id"]), record["contents"], score=score)
    if "text" in record:
        return Passage(id=str(record["id"]), title=str(record.get("title", "")), text=str(record["text"]), score=score)
    raise ValueError(f"Corpus row {record.get('id')!r} has no string 'contents' and no 'text'.")


def iter_corpus(corpus) -> Iterator[Passage]:
    """Streams validated `Passage`s from a JSONL path or an iterable of rows (see `trl_search.retrievers.corpus`).

    Example:
        >>> [p.title for p in iter_corpus([{"id": "0", "title": "Paris", "text": "Paris is in France."}])]
        ['Paris']
    """
    from .corpus import iter_corpus as _iter_corpus

    return _iter_corpus(corpus)


class Retriever(ABC):
    """A search engine that answers a whole batch of queries in one call.

    Subclasses implement `search`; local ones also `build`, `save` and `load`.

    Example:
        >>> from trl_search.retrievers import BM25Retriever
        >>> retriever = BM25Retriever.build([{"id": "0", "contents": '"Paris"\\nParis is in France.'}])
        >>> [[p.title for p in hits] for hits in retriever.search(["where is paris"], k=1)]
        [['Paris']]
    """

    @abstractmethod
    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Returns, for each query, at most `k` passages, best first."""

    def describe(self) -> dict:
        """A JSON-serialisable description, saved with trained models and evaluation results."""
        return {"class": type(self).__name__}

    @staticmethod
    def _check_search_args(queries: list[str], k: int) -> None:
        if isinstance(queries, str):
            raise TypeError("`search` takes a list of queries; wrap a single query as [query].")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")


def load_retriever(spec, **options) -> Retriever:
    """The one place that decides what a retriever spec means: a `Retriever` (returned as is), an `http(s)://` URL of
    a `/retrieve` server, a saved index directory, a JSONL corpus (indexed with BM25 in memory on the fly), or
    `"sample"` (BM25 over the shipped sample corpus).

    A directory's `manifest.json` names its kind (`bm25`, `dense`, `hybrid`); `options` go to that class's `load`
    (e.g. `mmap=True` for BM25, `device="cuda"` for dense, `verify=True`), to `RemoteRetriever` for a URL, or to
    `BM25Retriever.build` for a corpus file.

    Example:
        >>> (hits,) = load_retriever("sample").search(["Which river flows through Qorugeth?"], k=1)
        >>> [passage.title for passage in hits]
        ['Qorugeth']
        >>> retriever = load_retriever("http://127.0.0.1:8000/retrieve")  # doctest: +SKIP
        >>> retriever = load_retriever("indexes/wiki-bm25", mmap=True)  # doctest: +SKIP
    """
    if isinstance(spec, Retriever):
        return spec
    spec = os.fspath(spec)
    if spec.startswith(("http://", "https://")):
        from .remote import RemoteRetriever

        return RemoteRetriever(spec, **options)
    if spec == "demo" and not os.path.exists(spec):
        raise ValueError(
            "The shipped corpus is now called 'sample': use load_retriever('sample') / --retriever sample ('demo' is "
            "the learning demo, `trl-search demo`)."
        )
    if spec == "sample":
        from ..data import SAMPLE_CORPUS_PATH
        from .bm25 import BM25Retriever

        # A few hundred passages: numpy scoring is instant, numba would first spend seconds compiling.
        return BM25Retriever.build(SAMPLE_CORPUS_PATH, backend="numpy", **options)
    if os.path.isfile(spec) and spec.endswith(".jsonl"):
        from .bm25 import BM25Retriever

        return BM25Retriever.build(spec, **options)
    from . import RETRIEVER_KINDS
    from .manifest import read_manifest

    kind = read_manifest(spec).get("kind")
    if kind not in RETRIEVER_KINDS:
        raise ValueError(f"{spec!r} names an unknown retriever kind {kind!r}; known: {sorted(RETRIEVER_KINDS)}.")
    return RETRIEVER_KINDS[kind]().load(spec, **options)
