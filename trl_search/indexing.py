"""Building index directories from a JSONL corpus: what `trl-search index` runs."""

from __future__ import annotations

import os

from .retrievers.base import Retriever


def build_index(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    *,
    kind: str = "bm25",
    show_progress: bool = True,
    **options,
) -> Retriever:
    """Streams `corpus` (JSONL, Search-R1 `{"id", "contents"}` or `{"id", "title", "text"}` rows) into an index
    directory `out` with a manifest. The directory appears only when the build has finished (temp dir + rename).

    `options` go to `BM25Retriever.build` (`engine`, `k1`, `b`, ...) or `DenseRetriever.build` (`encoder`, `index`,
    `pooling`, ...).

    Example:
        >>> build_index("wiki-18.jsonl", "indexes/wiki-bm25")  # doctest: +SKIP
        >>> build_index("wiki-18.jsonl", "indexes/wiki-e5", kind="dense", encoder="intfloat/e5-base-v2")  # doctest: +SKIP
    """
    if kind == "bm25":
        from .retrievers.bm25 import BM25Retriever

        retriever = BM25Retriever.build(corpus, show_progress=show_progress, **options)
    elif kind == "dense":
        from .retrievers.dense import DenseRetriever

        retriever = DenseRetriever.build(corpus, show_progress=show_progress, **options)
    else:
        raise ValueError(f"Unknown index kind {kind!r}: choose 'bm25' or 'dense'.")
    retriever.save(out)
    return retriever


def adopt_faiss_index(
    faiss_index: str | os.PathLike, corpus: str | os.PathLike, out: str | os.PathLike, *, encoder: str, **options
) -> Retriever:
    """Writes an index directory `out` that opens an existing FAISS index file and its JSONL corpus in place, such as
    Search-R1's `e5_Flat.index` + `wiki-18.jsonl` (nothing is copied; the manifest records their sizes).

    Example:
        >>> adopt_faiss_index("e5_Flat.index", "wiki-18.jsonl", "indexes/wiki-e5", encoder="intfloat/e5-base-v2")  # doctest: +SKIP
    """
    from .retrievers.dense import DenseRetriever

    encoder_device = options.pop("device", None)
    retriever = DenseRetriever.from_faiss(
        faiss_index, corpus, encoder=encoder, device="cpu", backend="faiss", encoder_device=encoder_device, **options
    )
    retriever.save(out)
    return retriever
