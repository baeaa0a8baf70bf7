"""Retrievers: one batch-first `search(queries, k)` interface over BM25, dense, hybrid and remote backends."""

from .base import Passage, Retriever, iter_corpus, load_retriever, passage_from_record
from .bm25 import BM25Retriever
from .cache import CachedRetriever
from .corpus import Corpus, CorpusError
from .hybrid import HybridRetriever
from .manifest import InvalidIndexError


def _dense():
    from .dense import DenseRetriever

    return DenseRetriever


# Maps the `kind` written in an index's manifest.json to a function returning the class that loads it.
RETRIEVER_KINDS = {"bm25": lambda: BM25Retriever, "dense": _dense, "hybrid": lambda: HybridRetriever}


def __getattr__(name):
    # Optional backends import their heavy dependencies only when used.
    if name == "DenseRetriever":
        return _dense()
    if name == "RemoteRetriever":
        from .remote import RemoteRetriever

        return RemoteRetriever
    if name in ("RetrieverUnavailableError", "RetrieverRequestError"):
        from . import remote

        return getattr(remote, name)
    raise AttributeError(name)


__all__ = [
    "BM25Retriever",
    "CachedRetriever",
    "Corpus",
    "CorpusError",
    "DenseRetriever",
    "HybridRetriever",
    "InvalidIndexError",
    "Passage",
    "RemoteRetriever",
    "Retriever",
    "RetrieverRequestError",
    "RetrieverUnavailableError",
    "iter_corpus",
    "load_retriever",
    "passage_from_record",
]
