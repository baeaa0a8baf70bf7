"""Retrieval across ranks: one retriever call per turn on the main process for the queries of every rank."""

from __future__ import annotations

from .retrievers.base import Passage, Retriever


class GatheredRetriever(Retriever):
    """Gathers the queries of all ranks to the main process, answers them in one `search` call there, and scatters the
    passages back, so that a single retriever (one index in memory, one server connection) serves the whole job.

    It is a collective: every rank calls `search` once per turn, with or without queries (`is_collective` tells the
    search rollout so). Only the main process uses `retriever`; the other ranks may pass `None`.

    Args:
        retriever: the retriever that answers on the main process.
        accelerator: the trainer's `Accelerator`.

    Example:
        >>> gathered = GatheredRetriever(BM25Retriever.load("indexes/wiki-bm25"), trainer.accelerator)  # doctest: +SKIP
        >>> gathered.search(["capital of France"], k=3)  # doctest: +SKIP
    """

    is_collective = True

    def __init__(self, retriever: Retriever | None, accelerator):
        if retriever is None and accelerator.is_main_process:
            raise ValueError("GatheredRetriever needs a retriever on the main process.")
        self.retriever = retriever
        self.accelerator = accelerator
        self.calls = 0  # calls answered by `retriever` (main process only)
        self.queries_answered = 0

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        import torch.distributed as dist
        from accelerate.utils import gather_object

        self._check_search_args(queries, k)
        if self.accelerator.num_processes == 1:
            return self._answer([list(queries)], k)[0]
        per_rank = gather_object([list(queries)])
        answers = self._answer(per_rank, k) if self.accelerator.is_main_process else None
        received = [None]
        dist.scatter_object_list(received, answers, src=0)
        return received[0]

    def _answer(self, per_rank: list[list[str]], k: int) -> list[list[list[Passage]]]:
        unique = list(dict.fromkeys(query for queries in per_rank for query in queries))  # groups repeat queries
        if not unique:
            return [[] for _ in per_rank]
        results = self.retriever.search(unique, k)
        if len(results) != len(unique):
            raise RuntimeError(
                f"{type(self.retriever).__name__}.search returned {len(results)} result lists for {len(unique)} queries."
            )
        self.calls += 1
        self.queries_answered += len(unique)
        by_query = dict(zip(unique, results))
        return [[list(by_query[query]) for query in queries] for queries in per_rank]

    def describe(self) -> dict:
        inner = self.retriever.describe() if self.retriever is not None else None
        return {"class": type(self).__name__, "inner": inner}
