"""BM25 retrieval with bm25s."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable

import numpy as np

from .base import Passage, Retriever, iter_corpus


class BM25Retriever(Retriever):
    """Lexical BM25 retriever (bm25s engine): English stopwords removed, Snowball English stemming.

    Example:
        >>> corpus = [
        ...     {"id": "0", "contents": '"Paris"\\nParis is the capital of France.'},
        ...     {"id": "1", "contents": '"Berlin"\\nBerlin is the capital of Germany.'},
        ... ]
        >>> retriever = BM25Retriever.build(corpus)
        >>> retriever.search(["capital of germany"], k=1)[0][0].title
        'Berlin'
    """

    kind = "bm25"

    def __init__(self, engine, passages: list[Passage]):
        self._engine = engine
        self._passages = passages

    def __len__(self) -> int:
        return len(self._passages)

    @staticmethod
    def _stemmer():
        import Stemmer

        return Stemmer.Stemmer("english")

    @classmethod
    def _tokenize(cls, texts: list[str]):
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", stemmer=cls._stemmer(), show_progress=False)

    @classmethod
    def build(cls, corpus: str | os.PathLike | Iterable[dict | Passage]) -> BM25Retriever:
        """Indexes a JSONL corpus path (Search-R1 `{"id", "contents"}` rows) or an iterable of rows/Passages."""
        import bm25s

        passages = list(iter_corpus(corpus))
        if not passages:
            raise ValueError("The corpus is empty: BM25Retriever.build needs at least one passage.")
        engine = bm25s.BM25()
        engine.index(cls._tokenize([f"{p.title}\n{p.text}" for p in passages]), show_progress=False)
        return cls(engine, passages)

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        self._check_search_args(queries, k)
        if not queries:
            return []
        k_eff = min(k, len(self._passages))
        tokens = self._tokenize(list(queries))
        indices, scores = self._engine.retrieve(tokens, k=k_eff, show_progress=False)
        results = []
        for row_indices, row_scores, query_ids in zip(indices, scores, tokens.ids):
            if not query_ids:  # nothing left after stopwords: no lexical evidence, no passages
                results.append([])
                continue
            hits = []
            for index, score in zip(np.asarray(row_indices).tolist(), np.asarray(row_scores).tolist()):
                if score <= 0:
                    continue
                passage = self._passages[int(index)]
                hits.append(Passage(passage.id, passage.title, passage.text, float(score)))
            results.append(hits)
        return results

    def describe(self) -> dict:
        return {"class": type(self).__name__, "kind": self.kind, "engine": "bm25s", "passages": len(self)}

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the index to `directory` atomically: a failed save never leaves a directory that loads."""
        directory = os.fspath(directory)
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
        try:
            self._engine.save(os.path.join(staging, "bm25s"))
            with open(os.path.join(staging, "passages.jsonl"), "w", encoding="utf-8") as handle:
                for passage in self._passages:
                    handle.write(json.dumps({"id": passage.id, "title": passage.title, "text": passage.text}) + "\n")
            with open(os.path.join(staging, "manifest.json"), "w", encoding="utf-8") as handle:
                json.dump({"kind": self.kind, "engine": "bm25s", "passages": len(self)}, handle, indent=2)
            if os.path.exists(directory):
                shutil.rmtree(directory)
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BM25Retriever:
        import bm25s

        directory = os.fspath(directory)
        engine = bm25s.BM25.load(os.path.join(directory, "bm25s"), show_progress=False)
        passages = list(iter_corpus(os.path.join(directory, "passages.jsonl")))
        return cls(engine, passages)
