"""Int8 dense search with exact re-scoring (`Int8RescoredIndex`) against exact search: recall@3, ms per 512 queries,
memory, on synthetic vectors shaped like e5 embeddings. Side by side in one run.

Synthetic vectors (seeded): unit vectors made of a shared direction (e5-like anisotropy: unrelated passages still have
cosine ~0.6-0.7), a topic centroid (one per 1,000 passages) and noise with a decaying spectrum over dimensions.
Queries are noisy copies of indexed vectors (cosine ~0.85 to their source), so the top hits are close together, as
with real questions and passages.

    python benchmarks/bench_quantized_search.py                     # CPU: 200k x 768, 3 data seeds
    python benchmarks/bench_quantized_search.py --device cuda --vectors 21015324 --seeds 0 --candidates 16 32
        # wiki-18 size on one GPU: needs ~64 GB of GPU memory for the float32 ground truth, 32 GB of host memory
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trl_search.retrievers.quantized import Int8RescoredIndex  # noqa: E402
from trl_search.retrievers.vector_index import TorchExactIndex  # noqa: E402


WIKI18 = 21_015_324


def synthetic_vectors(n: int, dim: int, seed: int, device: str, chunk: int = 1 << 20) -> np.ndarray:
    """(n, dim) fp16 unit vectors in host memory (float32 on CPU runs), generated chunk by chunk on `device`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    spectrum = (torch.arange(1, dim + 1, device=device, dtype=torch.float32) ** -0.5)[torch.randperm(dim, device=device, generator=generator)]  # fmt: skip
    shared = torch.nn.functional.normalize(torch.randn(dim, device=device, generator=generator), dim=0)
    topics = max(1, n // 1000)
    centroids = torch.nn.functional.normalize(torch.randn((topics, dim), device=device, generator=generator), dim=1)
    out = np.empty((n, dim), dtype=np.float16 if device.startswith("cuda") else np.float32)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        topic = torch.randint(0, topics, (rows,), device=device, generator=generator)
        noise = torch.randn((rows, dim), device=device, generator=generator) * spectrum
        noise = torch.nn.functional.normalize(noise, dim=1)
        block = 0.8 * shared + 0.45 * centroids[topic] + 0.45 * noise
        out[start : start + rows] = torch.nn.functional.normalize(block, dim=1).cpu().numpy()
    return out


def make_queries(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    sources = np.asarray(vectors[rng.choice(len(vectors), size=count, replace=False)], dtype=np.float32)
    noise = rng.standard_normal(sources.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = sources + 0.6 * noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def recall_at_k(found_scores: np.ndarray, truth_scores: np.ndarray, found_ids, truth_ids) -> float:
    """Share of the true top-k found; a hit tied with the k-th true score counts (ties have no single answer)."""
    hits = 0
    for scores, truth, ids, true_ids in zip(found_scores, truth_scores, found_ids, truth_ids):
        hits += sum(1 for i, s in zip(ids, scores) if i in set(true_ids.tolist()) or s >= truth[-1] - 1e-6)
    return hits / truth_ids.size


def timed(search, queries: np.ndarray, batch: int, repeats: int, device: str) -> float:
    """Median ms per call of `search(batch queries)`."""
    search(queries[:batch])
    times = []
    for r in range(repeats):
        chunk = queries[(r * batch) % max(1, len(queries) - batch) :][:batch]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        search(chunk)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1024, help="queries scored for recall")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--candidates", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data seeds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (both searches get the same)")
    parser.add_argument("--scans", choices=["int8", "float"], nargs="+", default=["int8", "float"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.vectors:,} x {args.dim}, device {args.device}, {args.threads} thread(s), batch {args.batch}")

    gpu = args.device.startswith("cuda")
    rows, peaks, shape = {}, [], []
    for seed in args.seeds:
        vectors = synthetic_vectors(args.vectors, args.dim, seed, args.device)
        queries = make_queries(vectors, args.queries, seed)
        # Ground truth in float32 (fp16 queries would round the truth itself); timed as the exact baseline.
        exact = TorchExactIndex.from_vectors(vectors, devices=[args.device], dtype=torch.float32)
        truth_scores, truth_ids = exact.search(queries, 4)
        sample = np.asarray(vectors[:2000], dtype=np.float32)
        shape.append((float((sample[:1000] @ sample[1000:].T).mean()), float(truth_scores[:, 0].mean()),
                      float((truth_scores[:, 2] - truth_scores[:, 3]).mean())))  # fmt: skip
        truth_scores, truth_ids = truth_scores[:, :3], truth_ids[:, :3]
        exact_ms = timed(lambda q, exact=exact: exact.search(q, 3), queries, args.batch, args.repeats, args.device)
        rows.setdefault("exact (torch, float32)", []).append((1.0, exact_ms))
        exact_bytes = sum(shard.numel() * shard.element_size() for shard in exact.shards)
        del exact
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        index = Int8RescoredIndex.from_vectors(vectors, device=args.device)
        for scan in args.scans:
            for candidates in args.candidates:
                index.scan, index.candidates = scan, candidates
                scores, ids = index.search(queries, 3)
                recall = recall_at_k(scores, truth_scores, ids, truth_ids)
                ms = timed(lambda q, index=index: index.search(q, 3), queries, args.batch, args.repeats, args.device)
                used = "int8" if index._int8_scan else "float"  # int8 falls back where the kernel does not run
                rows.setdefault(f"int8 codes, {used} scan, {candidates} re-scored", []).append((recall, ms))
        if gpu:
            peaks.append(torch.cuda.max_memory_allocated())
        codes_bytes = index.codes.numel()
        del index
        print(f"[seed {seed}] done", flush=True)

    print(f"\n| search | recall@3 (mean, min-max over {len(args.seeds)} seeds) | ms / {args.batch} queries | "
          "ratio to exact |\n|---|---|---|---|")  # fmt: skip
    exact_ms = statistics.mean(ms for _, ms in next(iter(rows.values())))
    for name, values in rows.items():
        recalls, times = [r for r, _ in values], [ms for _, ms in values]
        print(f"| {name} | {statistics.mean(recalls):.4f} ({min(recalls):.4f}-{max(recalls):.4f}) | "
              f"{statistics.mean(times):.0f} | {statistics.mean(times) / exact_ms:.2f}x |")  # fmt: skip
    print(f"\ndata: unrelated pairs' cosine {statistics.mean(s[0] for s in shape):.3f}, best hit "
          f"{statistics.mean(s[1] for s in shape):.3f}, 3rd - 4th best {statistics.mean(s[2] for s in shape):.4f} "
          "(means)")  # fmt: skip
    if peaks:
        print(f"\npeak GPU memory while building and searching the int8 index: {max(peaks) / 2**30:.2f} GiB")
    print(f"\nmemory here: exact index {exact_bytes / 2**20:.0f} MiB, int8 codes {codes_bytes / 2**20:.0f} MiB "
          f"(re-scoring vectors stay in host memory: {vectors.nbytes / 2**20:.0f} MiB as {vectors.dtype})")  # fmt: skip
    need = Int8RescoredIndex.memory_bytes(WIKI18, args.dim)
    print(f"wiki-18 ({WIKI18:,} x {args.dim}): int8 codes n*d = {need['int8 codes'] / 1e9:.1f} GB "
          f"({need['int8 codes'] / 2**30:.1f} GiB) on the device; fp16 n*d*2 = {need['fp16 vectors'] / 1e9:.1f} GB; "
          f"float32 n*d*4 = {need['float32 vectors'] / 1e9:.1f} GB")  # fmt: skip


if __name__ == "__main__":
    main()
