"""The batch-first retriever interface shared by every backend."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Passage:
    """One retrieved passage.

    Example:
        >>> Passage(id="12", title="Paris", text="Paris is the capital of France.", score=3.2).title
        'Paris'
    """

    id: str
    title: str
    text: str
    score: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def contents(self) -> str:
        """The passage in Search-R1's corpus format: the title on the first line, then the text."""
        return f'"{self.title}"\n{self.text}'


def passage_from_record(record: dict | Passage, score: float = 0.0) -> Passage:
    """Turns a corpus row into a `Passage`.

    Accepts Search-R1's `{"id", "contents"}` rows (first line of `contents` is the title, optionally quoted) and
    `{"id", "title", "text"}` rows.

    Example:
        >>> passage_from_record({"id": 1, "contents": '"Paris"\\nParis is the capital of France.'})
        Passage(id='1', title='Paris', text='Paris is the capital of France.', score=0.0)
    """
    if isinstance(record, Passage):
        return record
    if not isinstance(record, dict) or "id" not in record:
        raise ValueError(
            f"A corpus row must be a dict with an 'id' and either 'contents' or 'title'+'text'; got {record!r:.200}"
        )
    if "contents" in record:
        title, _, text = str(record["contents"]).partition("\n")
        title = title.strip()
        if len(title) >= 2 and title[0] == title[-1] == '"':
            title = title[1:-1]
        return Passage(id=str(record["id"]), title=title, text=text.strip(), score=score)
    if "text" in record:
        return Passage(id=str(record["id"]), title=str(record.get("title", "")), text=str(record["text"]), score=score)
    raise ValueError(f"Corpus row {record.get('id')!r} has neither 'contents' nor 'text'.")


def iter_corpus(corpus: str | os.PathLike | Iterable[dict | Passage]) -> Iterator[Passage]:
    """Streams `Passage`s from a JSONL path or an iterable of rows (blank lines skipped).

    Example:
        >>> [p.title for p in iter_corpus([{"id": "0", "title": "Paris", "text": "Paris is in France."}])]
        ['Paris']
    """
    if isinstance(corpus, (str, os.PathLike)):
        path = os.fspath(corpus)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Corpus file not found: {path}. Pass a JSONL file with one passage per line.")
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number} is not valid JSON: {error}") from error
                yield passage_from_record(record)
    else:
        for record in corpus:
            yield passage_from_record(record)


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


def load_retriever(spec: str | os.PathLike, **options) -> Retriever:
    """Opens a retriever from a saved index directory or an `http(s)://` URL of a `/retrieve` server.

    The directory's `manifest.json` names its kind (`bm25`, `dense`, `hybrid`); `options` go to that class's `load`
    (e.g. `mmap=True` for BM25, `device="cuda"` for dense) or to `RemoteRetriever` for a URL.

    Example:
        >>> retriever = load_retriever("http://127.0.0.1:8000/retrieve")  # doctest: +SKIP
        >>> retriever = load_retriever("indexes/wiki-bm25", mmap=True)  # doctest: +SKIP
    """
    spec = os.fspath(spec)
    if spec.startswith(("http://", "https://")):
        from .remote import RemoteRetriever

        return RemoteRetriever(spec, **options)
    from . import RETRIEVER_KINDS
    from .manifest import read_manifest

    kind = read_manifest(spec).get("kind")
    if kind not in RETRIEVER_KINDS:
        raise ValueError(f"{spec!r} names an unknown retriever kind {kind!r}; known: {sorted(RETRIEVER_KINDS)}.")
    return RETRIEVER_KINDS[kind]().load(spec, **options)
