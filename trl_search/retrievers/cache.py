"""A query cache around any retriever: repeated queries (common across a GRPO group) are looked up once."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .base import Passage, Retriever


class CachedRetriever(Retriever):
    """Wraps a retriever with an LRU cache keyed by query text.

    Within a batch, identical (query, k) pairs are searched once; across batches, the last `max_entries` distinct
    queries are remembered. A cached answer for a larger k also serves a smaller k. `hit_rate` (and `stats()`)
    report how often the inner retriever was spared, for the trainer's logs.

    Example:
        >>> from trl_search.retrievers import BM25Retriever
        >>> inner = BM25Retriever.build([{"id": "0", "title": "Paris", "text": "Paris is in France."}])
        >>> cached = CachedRetriever(inner)
        >>> _ = cached.search(["paris", "paris"], k=1)
        >>> _ = cached.search(["paris"], k=1)
        >>> cached.hits, cached.lookups, round(cached.hit_rate, 2)
        (2, 3, 0.67)
    """

    def __init__(self, retriever: Retriever, max_entries: int = 100_000):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1; got {max_entries}.")
        self.retriever = retriever
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, list[Passage]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.lookups = 0

    @property
    def hit_rate(self) -> float:
        """Fraction of queries answered without the inner retriever since the last `reset_stats()`."""
        return self.hits / self.lookups if self.lookups else 0.0

    def stats(self) -> dict:
        """Counters for logging: `{"hits", "lookups", "hit_rate", "entries"}`."""
        return {"hits": self.hits, "lookups": self.lookups, "hit_rate": self.hit_rate, "entries": len(self._entries)}

    def reset_stats(self) -> None:
        self.hits = self.lookups = 0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _lookup(self, query: str, k: int) -> list[Passage] | None:
        entry = self._entries.get(query)
        if entry is None:
            return None
        cached_k, passages = entry
        # A shorter list than its k is the complete answer, so it serves any k.
        if cached_k >= k or len(passages) < cached_k:
            self._entries.move_to_end(query)
            return passages[:k]
        return None

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        self._check_search_args(queries, k)
        results: list[list[Passage] | None] = [None] * len(queries)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, query in enumerate(queries):
                self.lookups += 1
                cached = self._lookup(query, k)
                if cached is not None:
                    results[i] = list(cached)
                    self.hits += 1
                elif query in missing:
                    missing[query].append(i)
                    self.hits += 1  # a duplicate within the batch is searched once
                else:
                    missing[query] = [i]
        if missing:
            unique = list(missing)
            answers = self.retriever.search(unique, k)
            with self._lock:
                for query, passages in zip(unique, answers):
                    self._entries[query] = (k, passages)
                    self._entries.move_to_end(query)
                    for i in missing[query]:
                        results[i] = list(passages)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return results

    def describe(self) -> dict:
        return {"class": type(self).__name__, "max_entries": self.max_entries, "inner": self.retriever.describe()}
