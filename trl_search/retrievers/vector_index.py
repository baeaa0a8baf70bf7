"""Vector indexes for dense retrieval: FAISS on CPU (flat, HNSW, IVF) and exact torch search sharded over GPUs."""

from __future__ import annotations

import os
import struct

import numpy as np


def import_faiss():
    """`import faiss`, or an ImportError naming the extra to install.

    Example:
        >>> faiss = import_faiss()  # doctest: +SKIP
    """
    try:
        import faiss
    except ImportError as error:
        raise ImportError("FAISS indexes need `pip install trl-search[dense]` (faiss-cpu).") from error
    return faiss


INDEX_KINDS = ("flat", "hnsw", "ivf")
# efSearch giving >= 0.9 recall@3 against exact search at M=32 (see benchmarks/bench_dense.py).
DEFAULT_EF_SEARCH = 128


class FaissIndex:
    """Inner-product FAISS index (cosine on normalised vectors): `"flat"` (exact), `"hnsw"` or `"ivf"`.

    Example:
        >>> index = FaissIndex.create("hnsw", dim=4)
        >>> index.add(np.eye(4, dtype=np.float32))
        >>> index.search(np.eye(4, dtype=np.float32)[:1], k=1)[1].tolist()
        [[0]]
    """

    def __init__(self, index, kind: str, ef_search: int | None = None, nprobe: int | None = None):
        self.index = index
        self.kind = kind
        self.set_search_parameters(ef_search=ef_search, nprobe=nprobe)
        self._pending: list[np.ndarray] = []

    @classmethod
    def create(
        cls,
        kind: str,
        dim: int,
        *,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = DEFAULT_EF_SEARCH,
        nlist: int = 1024,
        nprobe: int = 32,
    ) -> FaissIndex:
        faiss = import_faiss()
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
        elif kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"Unknown index kind {kind!r}; choose one of {INDEX_KINDS}.")
        return cls(index, kind, ef_search=ef_search, nprobe=nprobe)

    @staticmethod
    def kind_of(index) -> str:
        faiss = import_faiss()
        if isinstance(index, faiss.IndexFlat):
            return "flat"
        if isinstance(index, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(index, faiss.IndexIVF):
            return "ivf"
        return type(index).__name__

    def set_search_parameters(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Trades speed for recall: `ef_search` (HNSW candidate list) and `nprobe` (IVF lists visited)."""
        if ef_search is not None and self.kind == "hnsw":
            self.index.hnsw.efSearch = int(ef_search)
        if nprobe is not None and self.kind == "ivf":
            self.index.nprobe = int(nprobe)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) + sum(len(chunk) for chunk in self._pending)

    def add(self, vectors: np.ndarray) -> None:
        """Adds vectors; an untrained IVF index buffers them until it has enough to train its lists."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.index.is_trained:
            self.index.add(vectors)
            return
        self._pending.append(vectors)
        if sum(len(chunk) for chunk in self._pending) >= 40 * self.index.nlist:
            self.finish()

    def finish(self) -> None:
        """Trains on (and adds) any buffered vectors; an IVF index with fewer vectors than lists shrinks its lists."""
        if not self._pending:
            return
        vectors, self._pending = np.concatenate(self._pending), []
        if not self.index.is_trained:
            if len(vectors) < self.index.nlist:
                raise ValueError(
                    f"An IVF index with nlist={self.index.nlist} needs at least that many passages to train; "
                    f"got {len(vectors)}. Pass a smaller nlist (about sqrt(passages)) or use index='flat'/'hnsw'."
                )
            self.index.train(vectors)
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids), each (len(queries), k); missing hits have id -1."""
        self.finish()
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, path: str) -> None:
        self.finish()
        import_faiss().write_index(self.index, path)

    @classmethod
    def load(cls, path: str, ef_search: int | None = None, nprobe: int | None = None, mmap: bool = False):
        from .manifest import InvalidIndexError

        faiss = import_faiss()
        try:
            index = faiss.read_index(path, faiss.IO_FLAG_MMAP if mmap else 0) if mmap else faiss.read_index(path)
        except RuntimeError as error:
            message = str(error).strip().splitlines()[-1][:200]
            raise InvalidIndexError(f"{path}: FAISS cannot read this index ({message}); rebuild it.") from None
        return cls(index, cls.kind_of(index), ef_search=ef_search, nprobe=nprobe)

    def flat_vectors(self) -> np.ndarray | None:
        """The stored vectors of a flat or HNSW index as an (ntotal, d) view (no copy), else None."""
        faiss = import_faiss()
        storage = self.index.storage if self.kind == "hnsw" else self.index
        storage = faiss.downcast_index(storage)
        if not isinstance(storage, faiss.IndexFlat) or self.index.ntotal == 0:
            return None
        return faiss.rev_swig_ptr(storage.get_xb(), self.index.ntotal * self.dim).reshape(-1, self.dim)

    def check_structure(self, path: str) -> None:
        """Raises `InvalidIndexError` when the graph links (HNSW) or list ids (IVF) point outside the index, which
        FAISS would follow unchecked."""
        from .manifest import InvalidIndexError

        faiss, n = import_faiss(), self.index.ntotal
        if self.kind == "hnsw":
            hnsw = self.index.hnsw
            neighbors, offsets = faiss.vector_to_array(hnsw.neighbors), faiss.vector_to_array(hnsw.offsets)
            levels = faiss.vector_to_array(hnsw.levels)
            damaged = (
                len(levels) != n
                or len(offsets) != n + 1
                or (len(offsets) and (offsets[0] != 0 or offsets[-1] != len(neighbors)))
                or np.any(np.diff(offsets.astype(np.int64)) < 0)
                or (len(neighbors) and (neighbors.min() < -1 or neighbors.max() >= n))
                or not -1 <= hnsw.entry_point < max(n, 1)
            )
        elif self.kind == "ivf":
            lists = self.index.invlists
            sizes = [lists.list_size(i) for i in range(lists.nlist)]
            damaged = sum(sizes) != n
            for i, size in enumerate(sizes):
                if damaged:
                    break
                if size:
                    ids = faiss.rev_swig_ptr(lists.get_ids(i), size)
                    damaged = bool(ids.min() < 0 or ids.max() >= n)
        else:
            damaged = False
        if damaged:
            raise InvalidIndexError(f"{path}: the {self.kind} index's links or lists are damaged; rebuild the index.")


def read_flat_index(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """Memory-maps the vectors of a FAISS `IndexFlatIP`/`IndexFlatL2` file (such as Search-R1's `e5_Flat.index`)
    without FAISS, so GPU search needs only torch and no host copy of the 60+ GB file.

    Returns (metric, vectors) with metric `"ip"` or `"l2"` and vectors an (ntotal, d) float32 memmap.

    Example:
        >>> metric, vectors = read_flat_index("e5_Flat.index")  # doctest: +SKIP
        >>> vectors.shape  # doctest: +SKIP
        (21015324, 768)
    """
    path = os.fspath(path)
    with open(path, "rb") as handle:
        header = handle.read(4 + 4 + 8 + 8 + 8 + 1 + 4)
        if len(header) < 37:
            raise ValueError(f"{path} is too short to be a FAISS index file.")
        fourcc, dim, ntotal, _, _, _, metric_type = struct.unpack("<4siqqq?i", header)
        if fourcc not in (b"IxFI", b"IxF2"):
            raise ValueError(
                f"{path} holds a FAISS {fourcc.decode(errors='replace')!r} index, not a flat one; open it with "
                "FAISS (`pip install trl-search[dense]`) instead."
            )
        offset = 37 + (4 if metric_type > 1 else 0)
        handle.seek(offset)
        (count,) = struct.unpack("<q", handle.read(8))
        offset += 8
    expected = ntotal * dim
    # FAISS writes the code vector's length either in floats or, since 1.7.3, in 4-byte words: both equal n*d.
    if count not in (expected, expected * 4) or os.path.getsize(path) < offset + expected * 4:
        raise ValueError(
            f"{path}: header says {ntotal} x {dim} vectors but the file size does not match; is it whole?"
        )
    vectors = np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=(ntotal, dim))
    return ("ip" if fourcc == b"IxFI" else "l2"), vectors


def _block_topk(scores, k: int, group: int = 256):
    """Exact top-k along dim 1, found via the k best groups of `group` columns.

    `topk` over a million columns per row is slow on GPU; a max over each group is a cheap bandwidth-bound reduction,
    and the k best elements always lie in the k groups with the largest maxima, so only k * group columns are ranked.
    """
    import torch

    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    full = (n_cols // group) * group
    if full < 4 * k * group:
        return scores.topk(k, dim=1)
    grouped = scores[:, :full].view(n_rows, full // group, group)
    _, best_groups = grouped.amax(dim=2).topk(k, dim=1)
    candidates = torch.gather(grouped, 1, best_groups[:, :, None].expand(n_rows, k, group)).reshape(n_rows, k * group)
    columns = best_groups[:, :, None] * group + torch.arange(group, device=scores.device)
    columns = columns.reshape(n_rows, k * group)
    if full < n_cols:  # the tail that does not fill a group
        candidates = torch.cat([candidates, scores[:, full:]], dim=1)
        tail = torch.arange(full, n_cols, device=scores.device).expand(n_rows, n_cols - full)
        columns = torch.cat([columns, tail], dim=1)
    top_scores, positions = candidates.topk(k, dim=1)
    return top_scores, torch.gather(columns, 1, positions)


class TorchExactIndex:
    """Exact inner-product search with torch: vectors sharded over `devices` (every visible GPU by default),
    stored in fp16 on GPU, one matrix product + top-k per row block, partial top-k merged across shards.

    Wiki-18's 21M x 768 e5 vectors take 32 GB in fp16: one 80 GB GPU, or shards over several smaller ones.

    Example:
        >>> index = TorchExactIndex.from_vectors(np.eye(3, dtype=np.float32), devices=["cpu"])
        >>> index.search(np.eye(3, dtype=np.float32)[2:], k=1)[1].tolist()
        [[2]]
    """

    def __init__(self, shards: list, offsets: list[int], block_bytes: int = 1 << 30):
        self.shards = shards
        self.offsets = offsets
        self.block_bytes = block_bytes

    @staticmethod
    def default_devices() -> list[str]:
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]

    @classmethod
    def from_vectors(
        cls, vectors: np.ndarray, devices: list[str] | None = None, dtype=None, copy_rows: int = 1 << 20
    ) -> TorchExactIndex:
        """Copies (n, d) vectors (an array or memmap) to the devices in chunks of `copy_rows` rows.

        `dtype` defaults to float16 on GPU and float32 on CPU (CPU half-precision matmuls are slow)."""
        import torch

        devices = devices or cls.default_devices()
        n = len(vectors)
        bounds = np.linspace(0, n, len(devices) + 1).astype(np.int64)
        shards, offsets = [], []
        for device, start, end in zip(devices, bounds[:-1], bounds[1:]):
            shard_dtype = dtype or (torch.float16 if torch.device(device).type == "cuda" else torch.float32)
            shard = torch.empty((int(end - start), vectors.shape[1]), dtype=shard_dtype, device=device)
            for row in range(int(start), int(end), copy_rows):
                stop = min(row + copy_rows, int(end))
                chunk = torch.from_numpy(np.array(vectors[row:stop], dtype=np.float32))  # a writable copy of the slice
                shard[row - start : stop - start] = chunk.to(device=device, dtype=shard_dtype, non_blocking=False)
            shards.append(shard)
            offsets.append(int(start))
        return cls(shards, offsets)

    @property
    def ntotal(self) -> int:
        return sum(int(shard.shape[0]) for shard in self.shards)

    @property
    def dim(self) -> int:
        return int(self.shards[0].shape[1])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids), each (len(queries), min(k, ntotal)), best first."""
        import torch

        k = min(k, self.ntotal)
        partial_scores, partial_ids = [], []
        with torch.inference_mode():
            # Issue every shard's work before collecting any: kernels on different GPUs then run concurrently.
            for shard, offset in zip(self.shards, self.offsets):
                if len(shard) == 0:
                    continue
                q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(shard.device, shard.dtype)
                block = max(k, self.block_bytes // max(1, q.shape[0] * shard.element_size()))
                for start in range(0, shard.shape[0], block):
                    top_scores, top_ids = _block_topk(q @ shard[start : start + block].T, k)
                    partial_scores.append(top_scores)
                    partial_ids.append(top_ids + (offset + start))
            scores = torch.cat([s.float().cpu() for s in partial_scores], dim=1)
            ids = torch.cat([i.cpu() for i in partial_ids], dim=1)
            best_scores, best = scores.topk(k, dim=1)
            return best_scores.numpy(), torch.gather(ids, 1, best).numpy()


def check_vectors(path: str, vectors, ntotal: int, dim: int, normalized: bool, chunk_rows: int = 1 << 18) -> None:
    """Checks a loaded vector index against its manifest: `ntotal` vectors of `dim` dimensions, intact FAISS links
    and lists, and, for `normalized` encoders, unit-norm stored vectors (damaged bytes give norms far from 1). Raises
    `InvalidIndexError` naming `path`.

    Example:
        >>> index = FaissIndex.create("flat", dim=2)
        >>> index.add(np.eye(2, dtype=np.float32))
        >>> check_vectors("index.faiss", index, ntotal=2, dim=2, normalized=True)
    """
    from .manifest import InvalidIndexError

    if vectors.ntotal != ntotal or vectors.dim != dim:
        raise InvalidIndexError(
            f"{path} holds {vectors.ntotal} vectors of {vectors.dim} dimensions but the manifest says {ntotal} of {dim}: "
            "the file is damaged or belongs to another index; rebuild the index."
        )
    if isinstance(vectors, FaissIndex):
        vectors.check_structure(path)
        matrix = vectors.flat_vectors()
        blocks = [] if matrix is None else (matrix[i : i + chunk_rows] for i in range(0, len(matrix), chunk_rows))
    else:
        blocks = (
            shard[i : i + chunk_rows].float() for shard in vectors.shards for i in range(0, len(shard), chunk_rows)
        )
    if not normalized:
        return
    for block in blocks:
        with np.errstate(over="ignore", invalid="ignore"):  # damaged bytes may hold huge values or NaN
            squared = (block * block).sum(1)
        worst = float(abs(squared - 1).max()) if len(block) else 0.0
        if not worst < 1e-2:  # NaN fails too
            raise InvalidIndexError(
                f"{path}: stored vectors are not unit-length (off by {worst:.3g}) although the encoder normalises: "
                "the file is damaged; rebuild the index."
            )
