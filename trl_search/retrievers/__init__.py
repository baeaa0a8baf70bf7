"""Retrievers: one batch-first `search(queries, k)` interface over BM25, dense, hybrid and remote backends."""

from .base import Passage, Retriever, iter_corpus, load_retriever, passage_from_record


# Backends import their dependencies (bm25s, numba, FAISS, HTTP clients) only when first used, so that importing a
# light module (`trl_search.rewards`, `trl_search.protocols`) never loads an index library.
_LAZY = {
    "Corpus": ("corpus", "Corpus"),
    "CorpusError": ("corpus", "CorpusError"),
    "InvalidIndexError": ("manifest", "InvalidIndexError"),
    "BM25Retriever": ("bm25", "BM25Retriever"),
    "CachedRetriever": ("cache", "CachedRetriever"),
    "HybridRetriever": ("hybrid", "HybridRetriever"),
    "DenseRetriever": ("dense", "DenseRetriever"),
    "RemoteRetriever": ("remote", "RemoteRetriever"),
    "RetrieverUnavailableError": ("remote", "RetrieverUnavailableError"),
    "RetrieverRequestError": ("remote", "RetrieverRequestError"),
}


def _backend(name: str):
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


# Maps the `kind` written in an index's manifest.json to a function returning the class that loads it.
RETRIEVER_KINDS = {
    "bm25": lambda: _backend("BM25Retriever"),
    "dense": lambda: _backend("DenseRetriever"),
    "hybrid": lambda: _backend("HybridRetriever"),
}


def __getattr__(name):
    if name in _LAZY:
        return _backend(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
