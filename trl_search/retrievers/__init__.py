"""Retrievers: one batch-first `search(queries, k)` interface over BM25, dense, hybrid and remote backends."""

from .base import Passage, Retriever, iter_corpus, load_retriever, passage_from_record
from .bm25 import BM25Retriever


def _dense():
    from .dense import DenseRetriever

    return DenseRetriever


# Maps the `kind` written in an index's manifest.json to a function returning the class that loads it.
RETRIEVER_KINDS = {"bm25": lambda: BM25Retriever, "dense": _dense}


def __getattr__(name):
    # Optional backends import their heavy dependencies only when used.
    if name == "DenseRetriever":
        return _dense()
    if name == "RemoteRetriever":
        from .remote import RemoteRetriever

        return RemoteRetriever
    raise AttributeError(name)


__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "Passage",
    "RemoteRetriever",
    "Retriever",
    "iter_corpus",
    "load_retriever",
    "passage_from_record",
]
