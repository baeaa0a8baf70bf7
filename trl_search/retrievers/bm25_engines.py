"""BM25 engines behind `BM25Retriever`: bm25s (default), tantivy and rank-bm25, all fed the same tokens."""

from __future__ import annotations

import json
import os

import numpy as np

from .manifest import InvalidIndexError, check_array, load_npy, read_json_file


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(
            f"This BM25 engine needs `{module}`: install it with `pip install trl-search[{extra}]`."
        ) from error


_NUMBA_CACHE_ENABLED = False


def _enable_numba_cache() -> None:
    """Caches bm25s's compiled numba kernels on disk: compiling them costs ~12 s in every new process otherwise."""
    global _NUMBA_CACHE_ENABLED
    if _NUMBA_CACHE_ENABLED:
        return
    _NUMBA_CACHE_ENABLED = True
    try:
        from bm25s.numba import retrieve_utils

        for name in ("_retrieve_internal_jitted_serial", "_retrieve_internal_jitted_parallel"):
            getattr(retrieve_utils, name).enable_caching()
    except Exception:  # a private hook of bm25s: without it everything still works, only slower to start
        pass


class BM25sEngine:
    """bm25s: precomputed sparse BM25 scores (built and stored by bm25s), ranked by one of three backends:

    - `"numba"` (default): trl-search's kernel (`bm25_kernel.py`), which visits only the documents a query's terms
      touch; its cost follows the postings, not the corpus size.
    - `"bm25s-numba"`: bm25s's own numba retrieval (a dense score array per query: cost grows with the corpus).
    - `"numpy"`: bm25s's numpy retrieval (no compilation, slowest).

    Example:
        >>> builder = BM25sEngine.Builder({"k1": 0.9, "b": 0.4, "backend": "numba"}, workdir="")
        >>> builder.add([["pari", "franc"], ["berlin", "germani"]])
        >>> builder.finish().search([["germani"]], k=1)[0][0][0]
        1
    """

    name = "bm25s"
    packages = ("bm25s", "numba", "PyStemmer")
    defaults = {"k1": 0.9, "b": 0.4}

    backends = ("numba", "bm25s-numba", "numpy")

    def __init__(self, model, backend: str = "numba", n_threads: int = 1):
        # bm25s only knows its own backends; ours reads its score matrix directly.
        model.backend = "numba" if backend == "bm25s-numba" else "numpy"
        if backend == "bm25s-numba":
            _enable_numba_cache()
        self.model = model
        self.backend = backend
        self.n_threads = n_threads

    class Builder:
        """Streams texts into term ids (tokenisation fused with the vocabulary lookup) and the score matrix builder
        (`bm25_kernel.BM25MatrixBuilder`): the index bm25s builds, bit for bit, without its per-document lists."""

        def __init__(self, parameters: dict, workdir: str):
            from .bm25_kernel import BM25MatrixBuilder
            from .tokenization import TermIds

            self.parameters = parameters
            self.terms = TermIds()
            self.matrix = BM25MatrixBuilder(parameters["k1"], parameters["b"], spill_dir=workdir or None)

        def add_texts(self, texts: list[str]) -> None:
            self.matrix.add(*self.terms.encode(texts))

        def add(self, token_lists: list[list[str]]) -> None:
            """Adds already tokenised documents (terms of `tokenize`)."""
            vocab, terms = self.terms.vocab, self.terms.terms
            for token in {token for tokens in token_lists for token in tokens if token not in vocab}:
                vocab[token] = len(terms)
                terms.append(token)
            ids = np.fromiter((vocab[t] for tokens in token_lists for t in tokens), dtype=np.int32)
            self.matrix.add(ids, np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists)))

        def finish(self, n_threads: int = 1) -> BM25sEngine:
            import bm25s

            vocab = dict(self.terms.vocab)
            scores = self.matrix.finish(n_terms=len(vocab))
            vocab[""] = len(vocab)  # bm25s's empty token, kept so the saved index is exactly bm25s's layout
            model = bm25s.BM25(k1=self.parameters["k1"], b=self.parameters["b"], method="lucene", backend="numpy")
            model.scores, model.vocab_dict = scores, vocab
            model.unique_token_ids_set = set(vocab.values())
            model.nonoccurrence_array = None
            return BM25sEngine(model, self.parameters["backend"], n_threads)

    @property
    def num_docs(self) -> int:
        return int(self.model.scores["num_docs"])

    def search(self, token_lists: list[list[str]], k: int) -> list[list[tuple[int, float]]]:
        vocab = self.model.vocab_dict
        ids = [[vocab[token] for token in tokens if token in vocab] for tokens in token_lists]
        results: list[list[tuple[int, float]]] = [[] for _ in ids]
        active = [i for i, row in enumerate(ids) if row]  # no known token: no lexical evidence, no passages
        if not active:
            return results
        k = min(k, self.num_docs)
        if self.backend == "numba":
            from .bm25_kernel import bm25_topk

            scores, rows = bm25_topk(self.model.scores, [ids[i] for i in active], k, self.n_threads)
        else:
            threads = 0 if self.backend == "numpy" and self.n_threads == 1 else self.n_threads
            rows, scores = self.model.retrieve([ids[i] for i in active], k=k, show_progress=False, n_threads=threads)
        for i, row_ids, row_scores in zip(active, np.asarray(rows).tolist(), np.asarray(scores).tolist()):
            results[i] = [(int(r), float(s)) for r, s in zip(row_ids, row_scores) if s > 0 and r >= 0]
        return results

    def save(self, directory: str) -> None:
        self.model.save(os.path.join(directory, "bm25s"), show_progress=False)

    @classmethod
    def load(cls, directory: str, parameters: dict, mmap: bool = False, n_threads: int = 1, store=None):
        import bm25s

        folder = os.path.join(directory, "bm25s")
        vocab_size = _check_bm25s_files(folder)
        try:
            model = bm25s.BM25.load(folder, mmap=mmap, show_progress=False)
        except Exception as error:  # whatever bm25s raises on a damaged file, name the folder
            raise InvalidIndexError(f"{folder}: bm25s cannot load this index ({error}); rebuild it.") from None
        _check_bm25s_scores(folder, model.scores, vocab_size)
        return cls(model, parameters.get("backend", "numba"), n_threads)


def _check_bm25s_files(folder: str) -> int:
    """Checks bm25s's JSON files and the headers of its arrays (dtypes, shapes, vocabulary ids); returns the vocabulary
    size. Cheap: the arrays are only memory-mapped."""
    params = read_json_file(os.path.join(folder, "params.index.json"), "bm25s parameter file")
    if (
        not isinstance(params, dict)
        or isinstance(params.get("num_docs"), bool)
        or not isinstance(params.get("num_docs"), int)
    ):
        raise InvalidIndexError(f"{os.path.join(folder, 'params.index.json')}: no integer 'num_docs'; rebuild it.")
    vocab_path = os.path.join(folder, "vocab.index.json")
    vocab = read_json_file(vocab_path, "bm25s vocabulary")
    try:
        ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab)) if isinstance(vocab, dict) else None
    except (TypeError, ValueError):
        ids = None
    vocab_size = len(vocab) if isinstance(vocab, dict) else 0
    if ids is None or (vocab_size and (ids.min() < 0 or ids.max() >= vocab_size)):
        raise InvalidIndexError(f"{vocab_path}: the vocabulary is damaged (token ids outside 0..{vocab_size - 1}).")
    arrays = {name: load_npy(os.path.join(folder, f"{name}.csc.index.npy"), mmap=True) for name in BM25S_ARRAYS}
    nnz = len(arrays["data"]) if arrays["data"].ndim == 1 else -1
    check_array(os.path.join(folder, "data.csc.index.npy"), arrays["data"], ("float32", "float64"), (nnz,))
    check_array(os.path.join(folder, "indices.csc.index.npy"), arrays["indices"], ("int32", "int64"), (nnz,))
    # bm25s appends an empty-string token after the last column: it has an id but no column.
    columns = vocab_size - 1 if vocab.get("") == vocab_size - 1 else vocab_size
    check_array(os.path.join(folder, "indptr.csc.index.npy"), arrays["indptr"], ("int32", "int64"), (columns + 1,))
    return vocab_size


def _check_bm25s_scores(folder: str, scores: dict, vocab_size: int) -> None:
    """Bounds of the sparse score matrix: the numba kernel reads them unchecked, so bad pointers or document ids would
    crash the process (or read garbage) at the first query instead of failing here."""
    data, indices, indptr, num_docs = scores["data"], scores["indices"], scores["indptr"], int(scores["num_docs"])
    where = os.path.join(folder, "indptr.csc.index.npy")
    if indptr[0] != 0 or indptr[-1] != len(data) or np.any(np.diff(indptr) < 0):
        raise InvalidIndexError(f"{where}: the column pointers are damaged (not 0..{len(data)}, ascending); rebuild.")
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= num_docs):
        where = os.path.join(folder, "indices.csc.index.npy")
        raise InvalidIndexError(f"{where}: document ids outside 0..{num_docs - 1}: the file is damaged; rebuild.")
    # BM25 term scores are positive and finite; the kernel also relies on 0 meaning "no score yet".
    if len(data) and not (float(data.min()) > 0 and np.isfinite(data.max())):
        where = os.path.join(folder, "data.csc.index.npy")
        raise InvalidIndexError(f"{where}: scores that are not positive finite numbers: the file is damaged; rebuild.")


BM25S_ARRAYS = ("data", "indices", "indptr")


class TantivyEngine:
    """tantivy (Rust, Lucene-like): builds on disk with bounded memory, so it indexes 21M passages on a small box.

    tantivy's BM25 uses fixed k1=1.2, b=0.75. Documents are indexed pre-tokenised (whitespace-joined tokens), so
    the terms are exactly the shared tokenisation's.

    Example:
        >>> import tempfile
        >>> builder = TantivyEngine.Builder({}, workdir=tempfile.mkdtemp())
        >>> builder.add([["pari", "franc"], ["berlin", "germani"]])
        >>> builder.finish().search([["germani"]], k=1)[0][0][0]
        1
    """

    name = "tantivy"
    packages = ("tantivy", "PyStemmer")
    defaults = {"k1": 1.2, "b": 0.75}

    def __init__(self, index, path: str, n_threads: int = 1):
        self.index = index
        self.path = path
        self.schema = index.schema
        self.searcher = index.searcher()
        self.n_threads = n_threads

    @staticmethod
    def _schema():
        tantivy = _require("tantivy", "tantivy")
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("body", stored=False, tokenizer_name="whitespace", index_option="freq")
        builder.add_unsigned_field("row", stored=True, indexed=False)
        return builder.build()

    class Builder:
        def __init__(self, parameters: dict, workdir: str):
            tantivy = _require("tantivy", "tantivy")
            self.tantivy = tantivy
            self.path = os.path.join(workdir, "tantivy")
            os.makedirs(self.path)
            self.index = tantivy.Index(TantivyEngine._schema(), path=self.path)
            heap = int(parameters.get("heap_mb", 256)) * 1_000_000
            self.writer = self.index.writer(heap_size=heap, num_threads=int(parameters.get("index_threads", 1)))
            self.rows = 0

        def add(self, token_lists: list[list[str]]) -> None:
            for tokens in token_lists:
                document = self.tantivy.Document()
                document.add_unsigned("row", self.rows)
                document.add_text("body", " ".join(tokens))
                self.writer.add_document(document)
                self.rows += 1

        def finish(self, n_threads: int = 1) -> TantivyEngine:
            self.writer.commit()
            self.writer.wait_merging_threads()
            self.index.reload()
            return TantivyEngine(self.index, self.path, n_threads)

    @property
    def num_docs(self) -> int:
        return int(self.searcher.num_docs)

    def search(self, token_lists: list[list[str]], k: int) -> list[list[tuple[int, float]]]:
        import tantivy

        should, term_query = tantivy.Occur.Should, tantivy.Query.term_query
        results = []
        try:
            for tokens in token_lists:
                if not tokens:
                    results.append([])
                    continue
                query = tantivy.Query.boolean_query([(should, term_query(self.schema, "body", t)) for t in tokens])
                hits = self.searcher.search(query, k, count=False).hits
                rows = [(int(self.searcher.doc(address)["row"][0]), float(score)) for score, address in hits]
                if any(not 0 <= row < self.num_docs for row, _ in rows):
                    raise ValueError("a stored row number is out of range")
                results.append(rows)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # a damaged segment: ValueError, or a Rust panic (a BaseException)
            from .manifest import InvalidIndexError

            raise InvalidIndexError(f"{self.path}: the tantivy index is damaged ({error}); rebuild it.") from None
        return results

    def save(self, directory: str) -> None:
        from .store import link_or_copy_tree

        link_or_copy_tree(self.path, os.path.join(directory, "tantivy"))

    @classmethod
    def load(cls, directory: str, parameters: dict, mmap: bool = False, n_threads: int = 1, store=None):
        tantivy = _require("tantivy", "tantivy")
        path = os.path.join(directory, "tantivy")
        try:
            engine = cls(tantivy.Index.open(path), path, n_threads)
            engine.searcher.num_docs  # noqa: B018 - reads the segment metadata now, not at the first query
            return engine
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # tantivy raises ValueError, or a Rust panic (a BaseException) on damage
            raise InvalidIndexError(f"{path}: tantivy cannot open this index ({error}); rebuild it.") from None


class RankBM25Engine:
    """rank-bm25 (pure Python, BM25Okapi): the reference implementation, kept for compatibility and as a baseline.

    It scores every document for every query, so it is orders of magnitude slower; it keeps no files of its own and
    re-tokenises the stored passages on load. Its Okapi idf is floored (epsilon x mean idf) for terms in half the
    passages or more, so on a tiny corpus such terms may score 0 and match nothing.

    Example:
        >>> builder = RankBM25Engine.Builder({"k1": 0.9, "b": 0.4}, workdir="")
        >>> builder.add([["pari", "franc"], ["berlin", "germani"], ["rome", "itali"]])
        >>> builder.finish().search([["germani"]], k=1)[0][0][0]
        1
    """

    name = "rank_bm25"
    packages = ("rank-bm25", "PyStemmer")
    defaults = {"k1": 0.9, "b": 0.4}

    def __init__(self, model, n_threads: int = 1):
        self.model = model

    class Builder:
        def __init__(self, parameters: dict, workdir: str):
            self.parameters = parameters
            self.corpus: list[list[str]] = []

        def add(self, token_lists: list[list[str]]) -> None:
            self.corpus.extend(token_lists)

        def finish(self, n_threads: int = 1) -> RankBM25Engine:
            rank_bm25 = _require("rank_bm25", "rank_bm25")
            # rank-bm25 divides by the average length; an all-stopword corpus would make it 0.
            corpus = [tokens or [""] for tokens in self.corpus]
            return RankBM25Engine(rank_bm25.BM25Okapi(corpus, k1=self.parameters["k1"], b=self.parameters["b"]))

    @property
    def num_docs(self) -> int:
        return int(self.model.corpus_size)

    def search(self, token_lists: list[list[str]], k: int) -> list[list[tuple[int, float]]]:
        results = []
        for tokens in token_lists:
            if not tokens:
                results.append([])
                continue
            scores = self.model.get_scores(tokens)
            k_eff = min(k, len(scores))
            top = np.argpartition(-scores, k_eff - 1)[:k_eff]
            top = top[np.argsort(-scores[top], kind="stable")]
            results.append([(int(i), float(scores[i])) for i in top if scores[i] > 0])
        return results

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, "rank_bm25.json"), "w", encoding="utf-8") as handle:
            json.dump({"note": "rank-bm25 keeps no index files; passages are re-tokenised on load."}, handle)

    @classmethod
    def load(cls, directory: str, parameters: dict, mmap: bool = False, n_threads: int = 1, store=None):
        from .tokenization import tokenize

        builder = cls.Builder(parameters, directory)
        batch = []
        for passage in store:
            batch.append(passage.contents)
            if len(batch) == 4096:
                builder.add(tokenize(batch))
                batch = []
        builder.add(tokenize(batch))
        return builder.finish()


ENGINES = {engine.name: engine for engine in (BM25sEngine, TantivyEngine, RankBM25Engine)}
