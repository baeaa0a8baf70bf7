"""Dense search in a quarter of float32's memory: an int8 scan finds a short list, full-precision vectors re-score it.

Wiki-18's 21M x 768 e5 vectors take 64.6 GB in float32 and 32.3 GB in fp16; as int8 codes they take n x d bytes,
16.1 GB (15.0 GiB), which a GPU can hold beside a policy while the full-precision vectors stay in host memory (or a
memory-mapped FAISS file) for the re-scoring of a few dozen candidates per query.
"""

from __future__ import annotations

import numpy as np


class Int8RescoredIndex:
    """Inner-product search over int8 scalar-quantised vectors, with the short list re-scored exactly.

    Each dimension j is quantised on its own range: x_j ~ low_j + (code_j + 128) * step_j with step_j = (max_j -
    min_j) / 255 over the indexed vectors. A search scans every code (int8 x int8 products on CPU; dequantised fp16
    products on GPU, or int8 where `scan="int8"`), keeps the `candidates` best rows per query, and ranks those by
    their exact inner product with the full-precision vectors. Results are exact whenever the true top-k lies in the
    short list; `benchmarks/bench_quantized_search.py` measures how often it does (recall@3 against exact search).

    Args:
        codes: (n, d) int8 tensor, on the device that scans (`from_vectors` builds it).
        low, step: (d,) float32 arrays, the quantisation grid.
        vectors: the full-precision (n, d) vectors for re-scoring: a numpy array or memmap, kept where it is.
        candidates: short-list length per query (at least k).
        scan: `"int8"` (the default; falls back to `"float"` where `torch._int_mm` does not run) or `"float"`.
        block_bytes: size of one block's score matrix; bounds the scan's extra memory.

    Example:
        >>> vectors = np.eye(4, dtype=np.float32)
        >>> index = Int8RescoredIndex.from_vectors(vectors, device="cpu")
        >>> index.search(vectors[2:3], k=1)[1].tolist()
        [[2]]
    """

    def __init__(
        self,
        codes,
        low: np.ndarray,
        step: np.ndarray,
        vectors: np.ndarray,
        candidates: int = 32,
        scan: str | None = None,
        block_bytes: int = 256 << 20,
    ):
        if len(vectors) != codes.shape[0] or vectors.shape[1] != codes.shape[1]:
            raise ValueError(f"codes {tuple(codes.shape)} and vectors {vectors.shape} must have the same shape.")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}.")
        if scan not in (None, "int8", "float"):
            raise ValueError(f"scan must be 'int8', 'float' or None, got {scan!r}.")
        self.codes = codes
        self.low = np.asarray(low, dtype=np.float32)
        self.step = np.asarray(step, dtype=np.float32)
        self.vectors = vectors
        self.candidates = candidates
        self.scan = scan or "int8"
        self.block_bytes = block_bytes
        self._int8_works: bool | None = None

    @classmethod
    def from_vectors(
        cls, vectors: np.ndarray, device: str | None = None, chunk_rows: int = 1 << 18, **options
    ) -> Int8RescoredIndex:
        """Quantises (n, d) vectors (an array or memmap, read in chunks) onto `device` (cuda if available).

        `vectors` is kept by reference for re-scoring: pass a memmap to keep it on disk and in the page cache."""
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        n, d = vectors.shape

        def chunks():  # float32 rows on the device; fp16 or float32 input is copied as is and converted there
            for start in range(0, n, chunk_rows):
                rows = np.asarray(vectors[start : start + chunk_rows])
                rows = rows if rows.dtype in (np.float16, np.float32) else rows.astype(np.float32)
                yield start, torch.from_numpy(np.array(rows)).to(device).float()

        low = torch.full((d,), float("inf"), device=device)
        high = torch.full((d,), float("-inf"), device=device)
        for _, chunk in chunks():
            low, high = torch.minimum(low, chunk.amin(dim=0)), torch.maximum(high, chunk.amax(dim=0))
        step = (high - low).clamp(min=1e-12) / 255.0
        codes = torch.empty((n, d), dtype=torch.int8, device=device)
        for start, chunk in chunks():
            codes[start : start + len(chunk)] = (torch.round((chunk - low) / step).clamp(0, 255) - 128).to(torch.int8)
        low, step = low.cpu().numpy(), step.cpu().numpy()
        return cls(codes, low, step, vectors, **options)

    @property
    def ntotal(self) -> int:
        return int(self.codes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    @staticmethod
    def memory_bytes(n: int, d: int) -> dict[str, int]:
        """Bytes of the scanned codes (device) and of the re-scoring vectors in fp16 and float32 (host or disk)."""
        return {"int8 codes": n * d, "fp16 vectors": 2 * n * d, "float32 vectors": 4 * n * d}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids), each (len(queries), min(k, ntotal)), best first; scores are exact inner products."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (batch, {self.dim}), got {queries.shape}.")
        k = min(k, self.ntotal)
        if len(queries) == 0 or k == 0:
            return np.zeros((len(queries), k), dtype=np.float32), np.zeros((len(queries), k), dtype=np.int64)
        short = self._short_list(queries, min(max(self.candidates, k), self.ntotal))
        candidates = np.asarray(self.vectors[short.reshape(-1)], dtype=np.float32).reshape(*short.shape, self.dim)
        exact = np.einsum("qcd,qd->qc", candidates, queries)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, axis=1), np.take_along_axis(short, order, axis=1)

    def _short_list(self, queries: np.ndarray, depth: int) -> np.ndarray:
        """Row ids of the `depth` best approximate scores per query."""
        import torch

        from .vector_index import _block_topk

        device = self.codes.device
        # q . x ~ sum_j (q_j step_j) code_j + (a per-query constant, which does not change the ranking)
        scaled = torch.from_numpy(queries * self.step).to(device)
        # Float scan: L1-normalised queries keep every fp16 score within +-128 (no overflow, no subnormal inputs).
        l1 = scaled.abs().sum(dim=1, keepdim=True).clamp(min=1e-30)
        float_queries = (scaled / l1).to(torch.float16 if device.type == "cuda" else torch.float32)
        query_scale = scaled.abs().amax(dim=1, keepdim=True).clamp(min=1e-30) / 127.0
        # The int8 kernel wants more than 16 rows and sizes divisible by 8: pad the queries with zero rows.
        rows = max(32, -(-len(queries) // 8) * 8)
        query_codes = torch.zeros((rows, self.dim), dtype=torch.int8, device=device)
        query_codes[: len(queries)] = torch.round(scaled / query_scale).to(torch.int8)
        rows_per_block = max(depth, self.block_bytes // (4 * rows)) // 8 * 8 or 8
        best_scores, best_ids = [], []
        with torch.inference_mode():
            for start in range(0, self.ntotal, rows_per_block):
                block = self.codes[start : start + rows_per_block]
                if self._int8_scan and block.shape[0] % 8 == 0:
                    scores = torch._int_mm(query_codes, block.T)[: len(queries)].float() * query_scale
                else:
                    scores = (float_queries @ block.to(float_queries.dtype).T).float() * l1
                top_scores, top_ids = _block_topk(scores, min(depth, block.shape[0]))
                best_scores.append(top_scores.float())
                best_ids.append(top_ids + start)
            scores, ids = torch.cat(best_scores, dim=1), torch.cat(best_ids, dim=1)
            _, best = scores.topk(depth, dim=1)
            return torch.gather(ids, 1, best).cpu().numpy()

    @property
    def _int8_scan(self) -> bool:
        if self.scan != "int8" or self.dim % 8:
            return False
        if self._int8_works is None:  # probe the kernel once on this device
            import torch

            try:
                probe = torch.zeros((32, self.dim), dtype=torch.int8, device=self.codes.device)
                torch._int_mm(probe, probe[:8].T)
                self._int8_works = True
            except (RuntimeError, AttributeError):
                self._int8_works = False
        return self._int8_works
