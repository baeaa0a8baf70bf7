"""BM25 retrieval: one retriever, three engines (bm25s default, tantivy, rank-bm25), one tokenisation."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable

from .base import Passage, Retriever
from .bm25_engines import ENGINES
from .corpus import Corpus
from .manifest import InvalidIndexError, atomic_directory, read_manifest, write_manifest
from .store import PassageStore, PassageStoreWriter, link_or_copy
from .tokenization import tokenize


def _progress(iterable, enabled: bool, total: int | None = None, desc: str = "Indexing"):
    """Wraps `iterable` in a tqdm bar when `enabled` (passages counted as they stream)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=" passages", mininterval=1.0)


def _corpus_length(corpus) -> int | None:
    """Number of passages in a JSONL path (one fast newline scan) or a sized iterable, else None."""
    if isinstance(corpus, (str, os.PathLike)) and os.path.isfile(corpus):
        from .store import _line_offsets

        return len(_line_offsets(os.fspath(corpus)))
    return len(corpus) if hasattr(corpus, "__len__") else None


class BM25Retriever(Retriever):
    """Lexical BM25 retriever with a choice of engine and the same tokenisation for all of them.

    Tokenisation (every engine, documents and queries alike): lowercase; words are runs of 2+ Unicode word
    characters; the 33 English stopwords of bm25s removed; Snowball English stemming (PyStemmer). A query with no
    token left, or no token present in the corpus, returns no passages, and only passages sharing a term with the
    query are returned, so a query can get fewer than `k`.

    Engines (`engine=`):
    - `"bm25s"` (default): bm25s's precomputed sparse scores, ranked by a numba kernel that visits only the
      documents a query touches (`backend="numba"`; `"bm25s-numba"` and `"numpy"` select bm25s's own retrieval).
      `load(..., mmap=True)` memory-maps the score matrix for indexes larger than RAM.
    - `"tantivy"` (`pip install trl-search[tantivy]`): on-disk Rust index built with bounded memory
      (`heap_mb`), the choice for very large corpora on a small machine. Its BM25 uses k1=1.2, b=0.75.
    - `"rank_bm25"` (`pip install trl-search[rank_bm25]`): the pure-Python reference; very slow, for comparisons.

    Scores are BM25 ("lucene" variant) with `k1=0.9, b=0.4` by default, the defaults of Pyserini, which Search-R1's
    BM25 server uses. Scores are comparable within an engine, not across engines.

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

    def __init__(
        self,
        engine,
        store: PassageStore,
        parameters: dict,
        corpus_sha256: str | None = None,
        corpus_stats: dict | None = None,
    ):
        self._engine = engine
        self._store = store
        self.parameters = parameters
        self.corpus_sha256 = corpus_sha256
        self.corpus_stats = corpus_stats

    def __len__(self) -> int:
        return len(self._store)

    @property
    def engine(self) -> str:
        return self.parameters["engine"]

    @classmethod
    def _parameters(cls, engine: str, k1, b, backend: str, heap_mb: int, index_threads: int) -> dict:
        if engine not in ENGINES:
            raise ValueError(f"Unknown BM25 engine {engine!r}; choose one of {sorted(ENGINES)}.")
        defaults = ENGINES[engine].defaults
        if engine == "tantivy" and (k1, b) not in ((None, None), (defaults["k1"], defaults["b"])):
            raise ValueError("tantivy's BM25 has fixed k1=1.2, b=0.75: drop k1/b or use engine='bm25s' to set them.")
        k1 = defaults["k1"] if k1 is None else float(k1)
        b = defaults["b"] if b is None else float(b)
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1; got k1={k1}, b={b}.")
        if backend not in ("numba", "bm25s-numba", "numpy"):
            raise ValueError(f"backend must be 'numba' (fastest), 'bm25s-numba' or 'numpy'; got {backend!r}.")
        parameters = {"engine": engine, "k1": k1, "b": b}
        if engine == "bm25s":
            parameters["backend"] = backend
        if engine == "tantivy":
            parameters.update(heap_mb=int(heap_mb), index_threads=int(index_threads))
        return parameters

    @classmethod
    def build(
        cls,
        corpus: str | os.PathLike | Iterable[dict | Passage],
        *,
        engine: str = "bm25s",
        k1: float | None = None,
        b: float | None = None,
        backend: str = "numba",
        n_threads: int = 1,
        heap_mb: int = 256,
        index_threads: int = 1,
        batch_size: int = 4096,
        show_progress: bool = False,
        work_dir: str | os.PathLike | None = None,
    ) -> BM25Retriever:
        """Indexes a corpus, streaming it: a JSONL path (Search-R1 `{"id", "contents"}` or `{"id", "title", "text"}`
        rows), an iterable of such rows or `Passage`s, or a `Corpus` (to choose how bad rows are handled).

        Each passage's `contents` is stored verbatim and tokenised. Passages go to an on-disk store as they stream, so
        only the engine's index is held in memory (tantivy's is on disk too). `n_threads` is the number of query
        threads (bm25s; -1 for all cores). `work_dir` is an empty folder for the store (default: a new temporary
        one); it is removed when the build fails or the retriever is garbage-collected.

        Example:
            >>> retriever = BM25Retriever.build("corpus.jsonl", engine="tantivy", show_progress=True)  # doctest: +SKIP
        """
        parameters = cls._parameters(engine, k1, b, backend, heap_mb, index_threads)
        workdir = os.fspath(work_dir) if work_dir is not None else tempfile.mkdtemp(prefix="trl-search-bm25-")
        corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
        try:
            writer = PassageStoreWriter(workdir)
            builder = ENGINES[engine].Builder(parameters, workdir)
            total = _corpus_length(corpus.source) if show_progress else None
            # Engines that take texts tokenise them fused with their term lookup (same terms as `tokenize`).
            add = builder.add_texts if hasattr(builder, "add_texts") else (lambda batch: builder.add(tokenize(batch)))
            texts = []
            for passage_id, contents, raw in _progress(corpus.entries(), show_progress, total):
                writer.add_entry(passage_id, contents, raw)
                texts.append(contents)
                if len(texts) >= batch_size:
                    add(texts)
                    texts = []
            add(texts)
            count, checksum = writer.close()
            if count == 0:
                raise ValueError("The corpus is empty: BM25Retriever.build needs at least one passage.")
            engine_index = builder.finish(n_threads=n_threads)
            retriever = cls(engine_index, PassageStore.open(workdir), parameters, checksum, dict(corpus.stats))
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        # The store (and tantivy's index) live in `workdir` until the retriever is garbage-collected.
        weakref.finalize(retriever, shutil.rmtree, workdir, True)
        return retriever

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        self._check_search_args(queries, k)
        if not queries:
            return []
        hits = self._engine.search(tokenize([str(query) for query in queries]), k)
        return [[self._store.get(row, score) for row, score in row_hits[:k]] for row_hits in hits]

    def describe(self) -> dict:
        return {"class": type(self).__name__, "kind": self.kind, "passages": len(self), **self.parameters}

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the index to `directory` atomically: a failed save never leaves a directory that loads."""
        with atomic_directory(directory) as staging:
            self._engine.save(staging)
            for name in ("passages.jsonl", "passages.offsets.npy"):
                link_or_copy(os.path.join(os.path.dirname(self._store.path), name), os.path.join(staging, name))
            write_manifest(
                staging,
                kind=self.kind,
                engine=self.engine,
                parameters=self.parameters,
                passages=len(self),
                corpus_sha256=self.corpus_sha256,
                packages=ENGINES[self.engine].packages,
                corpus=self.corpus_stats,
            )

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, mmap: bool = False, n_threads: int = 1, verify: bool = False
    ) -> BM25Retriever:
        """Opens a saved index. `mmap=True` memory-maps bm25s's arrays (for indexes near or above RAM size).

        Every load checks the manifest, file sizes and the structure of every array (shapes, dtypes, bounds of the
        sparse matrix), so damage is an `InvalidIndexError` naming the file; `verify=True` also re-hashes every file
        against the SHA-256 in the manifest (reads the whole index once).

        Example:
            >>> retriever = BM25Retriever.load("indexes/wiki-bm25", mmap=True)  # doctest: +SKIP
        """
        directory = os.fspath(directory)
        manifest = read_manifest(directory, kind=cls.kind, verify=verify)
        parameters = manifest["parameters"]
        if manifest["engine"] not in ENGINES or parameters.get("engine", manifest["engine"]) != manifest["engine"]:
            raise InvalidIndexError(
                f"{directory!r}: the manifest names an unknown BM25 engine {manifest['engine']!r}; rebuild the index."
            )
        store = PassageStore.open(directory, passages=manifest["passages"])
        engine = ENGINES[manifest["engine"]].load(directory, parameters, mmap=mmap, n_threads=n_threads, store=store)
        if engine.num_docs != len(store):
            raise InvalidIndexError(
                f"{directory!r}: the {manifest['engine']} index has {engine.num_docs} documents but the corpus has "
                f"{len(store)} passages; the index and corpus do not match. Rebuild the index."
            )
        return cls(engine, store, parameters, manifest["corpus_sha256"], manifest.get("corpus"))
