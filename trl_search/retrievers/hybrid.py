"""Hybrid retrieval: reciprocal-rank fusion of any retrievers (e.g. BM25 + dense)."""

from __future__ import annotations

import os

from .base import Passage, Retriever
from .manifest import atomic_directory, read_manifest, write_manifest


class HybridRetriever(Retriever):
    """Fuses the rankings of several retrievers with reciprocal-rank fusion (RRF).

    Each retriever returns its top `depth` passages; a passage's fused score is `sum_i weight_i / (rrf_k + rank_i)`
    (rank from 1) over the retrievers that returned it, so agreement between retrievers wins and raw scores on
    different scales never need calibrating. Passages are identified by `id`; ties keep first-seen order.

    Example:
        >>> from trl_search.retrievers import BM25Retriever
        >>> rows = [{"id": "0", "title": "Paris", "text": "Paris is in France."},
        ...         {"id": "1", "title": "Rome", "text": "Rome is in Italy."}]
        >>> hybrid = HybridRetriever([BM25Retriever.build(rows), BM25Retriever.build(rows, k1=1.2, b=0.75)])
        >>> hybrid.search(["italy"], k=1)[0][0].title
        'Rome'
    """

    kind = "hybrid"

    def __init__(
        self,
        retrievers: list[Retriever],
        weights: list[float] | None = None,
        rrf_k: float = 60.0,
        depth: int | None = None,
    ):
        if not retrievers:
            raise ValueError("HybridRetriever needs at least one retriever.")
        weights = [1.0] * len(retrievers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(retrievers) or any(w < 0 for w in weights):
            raise ValueError(f"Give one non-negative weight per retriever ({len(retrievers)}); got {weights}.")
        if rrf_k < 0:
            raise ValueError(f"rrf_k must be >= 0 (60 is the usual choice); got {rrf_k}.")
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be a positive number of candidates per retriever; got {depth}.")
        self.retrievers = list(retrievers)
        self.weights = weights
        self.rrf_k = float(rrf_k)
        self.depth = depth

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        self._check_search_args(queries, k)
        if not queries:
            return []
        depth = self.depth or max(2 * k, 10)
        rankings = [retriever.search(list(queries), max(k, depth)) for retriever in self.retrievers]
        results = []
        for query_index in range(len(queries)):
            fused: dict[str, list] = {}
            for weight, ranking in zip(self.weights, rankings):
                for rank, passage in enumerate(ranking[query_index], start=1):
                    entry = fused.setdefault(passage.id, [0.0, passage])
                    entry[0] += weight / (self.rrf_k + rank)
            best = sorted(fused.values(), key=lambda entry: -entry[0])[:k]
            results.append([p.with_score(score) for score, p in best])
        return results

    def describe(self) -> dict:
        return {
            "class": type(self).__name__,
            "kind": self.kind,
            "rrf_k": self.rrf_k,
            "weights": self.weights,
            "depth": self.depth,
            "retrievers": [retriever.describe() for retriever in self.retrievers],
        }

    def save(self, directory: str | os.PathLike) -> None:
        """Saves every part (local ones under `part-<i>/`, remote ones as their URL) and the fusion settings."""
        parts = []
        with atomic_directory(directory) as staging:
            for i, retriever in enumerate(self.retrievers):
                url = getattr(retriever, "url", None)
                if url is not None:
                    parts.append({"url": url})
                    continue
                if not hasattr(retriever, "save"):
                    raise TypeError(
                        f"{type(retriever).__name__} cannot be saved; save a HybridRetriever of savable parts."
                    )
                retriever.save(os.path.join(staging, f"part-{i}"))
                parts.append({"path": f"part-{i}"})
            write_manifest(
                staging,
                kind=self.kind,
                engine="rrf",
                parameters={"rrf_k": self.rrf_k, "weights": self.weights, "depth": self.depth, "parts": parts},
                passages=sum(len(r) for r in self.retrievers if hasattr(r, "__len__")),
                corpus_sha256=None,
            )

    @classmethod
    def load(cls, directory: str | os.PathLike, **options) -> HybridRetriever:
        """Opens a saved hybrid retriever; `options` go to every part's loader."""
        from .base import load_retriever

        directory = os.fspath(directory)
        parameters = read_manifest(directory, kind=cls.kind)["parameters"]
        retrievers = [
            load_retriever(part["url"])
            if "url" in part
            else load_retriever(os.path.join(directory, part["path"]), **options)
            for part in parameters["parts"]
        ]
        return cls(retrievers, weights=parameters["weights"], rrf_k=parameters["rrf_k"], depth=parameters["depth"])
