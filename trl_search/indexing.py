"""Building index directories from a JSONL corpus: what `trl-search index` runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator

from .retrievers.base import Retriever
from .retrievers.corpus import Corpus
from .retrievers.manifest import work_directory


class Interrupted(SystemExit):
    """Raised in the main thread by SIGTERM/SIGHUP while `exit_cleanly_on_signals` is active, so that every
    `finally`/`except BaseException` block (staging folders, work folders) runs before the process exits."""


@contextlib.contextmanager
def exit_cleanly_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Turns `signals` into an `Interrupted` exception (exit status 128 + signal) while the block runs.

    Python's default action for SIGTERM ends the process at once, skipping all cleanup; SIGINT already raises
    `KeyboardInterrupt`. Only the main thread can install handlers; elsewhere this does nothing.

    Example:
        >>> with exit_cleanly_on_signals():
        ...     pass
    """

    def handler(signum, frame):
        raise Interrupted(128 + signum)

    try:
        previous = {number: signal.signal(number, handler) for number in signals}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, action in previous.items():
            signal.signal(number, action)


def build_index(
    corpus: str | os.PathLike | Corpus,
    out: str | os.PathLike,
    *,
    kind: str = "bm25",
    show_progress: bool = True,
    on_bad_text: str = "error",
    allow_duplicate_ids: bool = False,
    **options,
) -> Retriever:
    """Streams `corpus` (JSONL, Search-R1 `{"id", "contents"}` or `{"id", "title", "text"}` rows) into an index
    directory `out` with a manifest. The directory appears only when the build has finished (temp dir + rename).

    Rows are validated as they stream (see `trl_search.retrievers.corpus.Corpus`: `on_bad_text`,
    `allow_duplicate_ids`). Temporary files live next to `out` (the finished ones are hard-linked into it, not
    copied) and are removed when the build fails or is interrupted; what a SIGKILL leaves is removed by the next
    build of the same `out`. `options` go to `BM25Retriever.build` (`engine`, `k1`, `b`, ...) or
    `DenseRetriever.build` (`encoder`, `index`, `pooling`, ...).

    Example:
        >>> build_index("wiki-18.jsonl", "indexes/wiki-bm25")  # doctest: +SKIP
        >>> build_index("wiki-18.jsonl", "indexes/wiki-e5", kind="dense", encoder="intfloat/e5-base-v2")  # doctest: +SKIP
    """
    if kind == "bm25":
        from .retrievers.bm25 import BM25Retriever as retriever_class
    elif kind == "dense":
        from .retrievers.dense import DenseRetriever as retriever_class
    else:
        raise ValueError(f"Unknown index kind {kind!r}: choose 'bm25' or 'dense'.")
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus, on_bad_text=on_bad_text, allow_duplicate_ids=allow_duplicate_ids)
    work_dir = work_directory(out)
    try:
        retriever = retriever_class.build(corpus, show_progress=show_progress, work_dir=work_dir, **options)
        retriever.save(out)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
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
