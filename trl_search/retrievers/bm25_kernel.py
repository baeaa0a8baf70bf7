"""A numba BM25 top-k kernel over bm25s's precomputed sparse scores that visits only the documents a query touches.

bm25s's own numba retrieval zeroes and ranks a dense array of every document for every query, so its cost grows
with the corpus (0.8 MB per query at 200k passages, 84 MB at 21M); this kernel's cost grows with the postings of the
query's terms. Its compiled code is cached on disk.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


_KERNEL = None


def _compile():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import numba

    @numba.njit(cache=True, nogil=True)
    def topk_kernel(data, indices, indptr, query_ptr, query_ids, num_docs, k, out_scores, out_ids):
        scores = np.zeros(num_docs, dtype=np.float32)
        touched = np.empty(num_docs, dtype=np.int64)
        for q in range(len(query_ptr) - 1):
            n_touched = 0
            for j in range(query_ptr[q], query_ptr[q + 1]):
                token = query_ids[j]
                for p in range(indptr[token], indptr[token + 1]):
                    doc = indices[p]
                    if scores[doc] == 0.0:  # BM25 term scores are positive: 0 means not seen yet
                        touched[n_touched] = doc
                        n_touched += 1
                    scores[doc] += data[p]
            # Sorted insertion into the top-k (ties: lower document id first), cheap for the small k of RAG.
            found = 0
            for t in range(n_touched):
                doc = touched[t]
                score = scores[doc]
                scores[doc] = 0.0  # reset for the next query as we go
                if found == k:
                    last_score, last_doc = out_scores[q, k - 1], out_ids[q, k - 1]
                    if score < last_score or (score == last_score and doc > last_doc):
                        continue
                    position = k - 1
                else:
                    position = found
                    found += 1
                while position > 0:
                    previous_score, previous_doc = out_scores[q, position - 1], out_ids[q, position - 1]
                    if score > previous_score or (score == previous_score and doc < previous_doc):
                        out_scores[q, position] = previous_score
                        out_ids[q, position] = previous_doc
                        position -= 1
                    else:
                        break
                out_scores[q, position] = score
                out_ids[q, position] = doc

    _KERNEL = topk_kernel
    return _KERNEL


def bm25_topk(scores: dict, query_ids: list[list[int]], k: int, n_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, doc ids) per query over bm25s's `scores` dict (`data`, `indices`, `indptr`, `num_docs`).

    Rows with fewer than k matching documents are padded with score 0 and id -1. `n_threads > 1` splits the batch
    over threads (the kernel releases the GIL); -1 uses every core.

    Example:
        >>> import bm25s
        >>> model = bm25s.BM25()
        >>> model.index([["pari", "franc"], ["berlin", "germani"]], show_progress=False)
        >>> bm25_topk(model.scores, [[model.vocab_dict["germani"]]], k=2)[1].tolist()
        [[1, -1]]
    """
    kernel = _compile()
    n = len(query_ids)
    out_scores = np.zeros((n, k), dtype=np.float32)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    if n == 0:
        return out_scores, out_ids
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    num_docs = int(scores["num_docs"])

    def run(start: int, end: int) -> None:
        chunk = query_ids[start:end]
        pointers = np.zeros(len(chunk) + 1, dtype=np.int64)
        np.cumsum([len(ids) for ids in chunk], out=pointers[1:])
        flat = np.fromiter((i for ids in chunk for i in ids), dtype=np.int64, count=int(pointers[-1]))
        kernel(data, indices, indptr, pointers, flat, num_docs, k, out_scores[start:end], out_ids[start:end])

    if n_threads == -1:
        n_threads = os.cpu_count() or 1
    if n_threads <= 1 or n < 2 * n_threads:
        run(0, n)
    else:
        bounds = np.linspace(0, n, n_threads + 1).astype(int)
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(run, bounds[:-1], bounds[1:]))
    return out_scores, out_ids


_SCATTER = None


def _compile_scatter():
    global _SCATTER
    if _SCATTER is not None:
        return _SCATTER
    import numba

    @numba.njit(cache=True, nogil=True)
    def scatter_kernel(terms, tf, pairs_per_doc, first_doc, idf, norm, next_slot, out_data, out_indices):
        # Counting sort into columns: documents arrive in order, so each column's documents come out ascending, as
        # scipy's CSC conversion in bm25s orders them.
        i = 0
        for d in range(len(pairs_per_doc)):
            doc = first_doc + d
            for _ in range(pairs_per_doc[d]):
                term = terms[i]
                slot = next_slot[term]
                next_slot[term] = slot + 1
                frequency = np.float64(tf[i])
                out_indices[slot] = doc
                out_data[slot] = np.float32(np.float64(idf[term]) * (frequency / (norm[doc] + frequency)))
                i += 1

    _SCATTER = scatter_kernel
    return _SCATTER


class BM25MatrixBuilder:
    """bm25s's sparse BM25 ("lucene" variant) score matrix, in its CSC layout (`data`, `indices`, `indptr`,
    `num_docs`), built from documents streamed as term ids.

    Each document is kept as its distinct terms and their frequencies (8 bytes per distinct term, no Python objects);
    `finish` scatters them into the columns batch by batch, freeing each batch as it goes, so the peak is about the
    final matrix plus these pairs. Scores equal bm25s's own indexing bit for bit: idf = log(1 + (N - df + 0.5) /
    (df + 0.5)) rounded to float32, times tf / (tf + k1 * (1 - b + b * length / mean length)) in float64, stored as
    float32.

    Example:
        >>> builder = BM25MatrixBuilder(k1=0.9, b=0.4)
        >>> builder.add(np.array([0, 1, 1, 1], dtype=np.int32), np.array([3, 1]))
        >>> matrix = builder.finish(n_terms=2)
        >>> matrix["indptr"].tolist(), matrix["indices"].tolist()
        ([0, 1, 3], [0, 0, 1])
    """

    _SPILLED = (("terms", np.int32), ("tf", np.int32), ("pairs_per_doc", np.int32))

    def __init__(self, k1: float, b: float, spill_dir: str | None = None):
        self.k1, self.b = k1, b
        self._batches: list[tuple] = []  # (terms, tf, pairs per document) arrays, or their sizes when spilled
        self._lengths: list[np.ndarray] = []
        self._df = np.zeros(0, dtype=np.int64)
        self.num_docs = 0
        # With a spill folder the pairs go to disk as they come (page cache, not process memory) and are read back
        # one batch at a time while scattering: the peak is then about the final matrix alone.
        self._spill = None
        if spill_dir:
            self._spill = {name: open(os.path.join(spill_dir, f"bm25-{name}.bin"), "w+b") for name, _ in self._SPILLED}

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Adds documents: `ids` their term ids concatenated, `lengths` the number of terms of each."""
        lengths = np.asarray(lengths, dtype=np.int64)
        docs = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        keys = (docs << 32) | np.asarray(ids, dtype=np.int64)  # document-major, then term: one sort finds the pairs
        keys.sort()
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))) if len(keys) else keys[:0]
        pairs = keys[starts]
        terms = (pairs & 0xFFFFFFFF).astype(np.int32)
        tf = np.diff(np.append(starts, len(keys))).astype(np.int32)
        pairs_per_doc = np.bincount(pairs >> 32, minlength=len(lengths)).astype(np.int32)
        if len(terms):
            counts = np.bincount(terms)
            if len(counts) > len(self._df):
                self._df = np.concatenate([self._df, np.zeros(len(counts) - len(self._df), dtype=np.int64)])
            self._df[: len(counts)] += counts
        if self._spill is None:
            self._batches.append((terms, tf, pairs_per_doc))
        else:
            for (name, _), array in zip(self._SPILLED, (terms, tf, pairs_per_doc)):
                array.tofile(self._spill[name])
            self._batches.append((len(terms), len(terms), len(pairs_per_doc)))
        self._lengths.append(lengths.astype(np.int32))
        self.num_docs += len(lengths)

    def finish(self, n_terms: int) -> dict:
        df = np.zeros(n_terms, dtype=np.int64)
        df[: len(self._df)] = self._df
        n = self.num_docs
        with np.errstate(divide="ignore"):
            idf = np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)
        lengths = np.concatenate(self._lengths).astype(np.float64) if self._lengths else np.zeros(0)
        self._lengths = []
        mean_length = lengths.mean() if n else 1.0
        norm = self.k1 * ((1 - self.b) + self.b * lengths / (mean_length or 1.0))
        del lengths
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        kernel, next_slot, first_doc = _compile_scatter(), indptr[:-1].copy(), 0
        batches, self._batches = self._batches, []
        spill, self._spill = self._spill, None
        try:
            for handle in (spill or {}).values():
                handle.seek(0)
            while batches:
                batch = batches.pop(0)  # freed once scattered
                if spill is not None:
                    batch = [
                        np.fromfile(spill[name], dtype, count) for (name, dtype), count in zip(self._SPILLED, batch)
                    ]
                terms, tf, pairs_per_doc = batch
                kernel(terms, tf, pairs_per_doc, first_doc, idf, norm, next_slot, data, indices)
                first_doc += len(pairs_per_doc)
        finally:
            for handle in (spill or {}).values():
                handle.close()
                os.remove(handle.name)
        return {"data": data, "indices": indices, "indptr": indptr, "num_docs": n}
