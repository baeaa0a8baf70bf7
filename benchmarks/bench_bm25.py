"""BM25 engines side by side on a generated corpus: index time, queries/s at batch 512 and k=3, peak memory.

The corpus is pseudo-words with a Zipfian frequency (100 per passage) whose 33 most frequent words are English
stopwords, as in real text; a query's cost is dominated by the postings of its common words, so queries mix content
words of one passage with frequency-drawn words (see generate_queries). `--no-stopwords` is the harsher variant.

Claim (issue 3): the default engine (bm25s + numba) answers >= 2,000 queries/s on one core at >= 200k passages, and
is >= 1,000x faster than rank-bm25.

    python benchmarks/bench_bm25.py                       # 200k passages, all engines
    python benchmarks/bench_bm25.py --passages 500000 --engines bm25s tantivy

Each engine runs in its own process pinned to one core, so peak memory (VmHWM) is that engine's alone.
rank-bm25 scores every passage in Python for every query, so it is timed on `--slow-queries` queries only.
"bm25s" is the default (bm25s index, trl-search's numba kernel); "bm25s:bm25s-numba" is bm25s's own numba retrieval.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def generate_corpus(
    path: str, passages: int, words_per_passage: int = 100, vocabulary: int = 50_000, seed: int = 0, stopwords=True
):
    """Writes a Search-R1-style JSONL corpus of pseudo-words with a Zipfian frequency (like natural text).

    As in English, the most frequent words are the stopwords the tokeniser drops (`stopwords=False` keeps
    pseudo-words there instead, a much harsher load in which every query hits huge posting lists)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(3, 10, size=vocabulary)
    words = np.array(["".join(rng.choice(letters, size=n)) for n in lengths], dtype=object)
    if stopwords:
        from bm25s.stopwords import STOPWORDS_EN

        words[: len(STOPWORDS_EN)] = sorted(STOPWORDS_EN)
    weights = 1.0 / np.arange(1, vocabulary + 1) ** 1.07
    weights /= weights.sum()
    with open(path, "w", encoding="utf-8") as handle:
        for start in range(0, passages, 10_000):
            count = min(10_000, passages - start)
            ids = rng.choice(vocabulary, size=(count, words_per_passage), p=weights)
            for offset, row in enumerate(ids):
                title = " ".join(words[row[:2]])
                handle.write(
                    json.dumps({"id": str(start + offset), "contents": f'"{title}"\n' + " ".join(words[row])})
                )
                handle.write("\n")
    return words, weights


def generate_queries(corpus_path: str, count: int, seed: int = 1) -> list[str]:
    """Question-like queries: 3-5 distinct words of one random passage (its content words, so every query has a
    relevant passage) plus 1-2 words drawn by corpus frequency (the common words questions also contain)."""
    rng = np.random.default_rng(seed)
    with open(corpus_path, encoding="utf-8") as handle:
        passages = [json.loads(line)["contents"].split("\n", 1)[1].split() for line in handle]
    all_words = np.array([word for words in passages[:2000] for word in words])  # a frequency sample of the corpus
    queries = []
    for row in rng.choice(len(passages), size=count):
        unique = sorted(set(passages[row]))
        content = rng.choice(unique, size=min(len(unique), int(rng.integers(3, 6))), replace=False).tolist()
        common = rng.choice(all_words, size=int(rng.integers(1, 3))).tolist()
        queries.append(" ".join(common + content))
    return queries


def worker(args) -> dict:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from trl_search.retrievers import BM25Retriever

    queries = json.load(open(args.queries_file))
    engine, _, backend = args.engine.partition(":")
    options = {"backend": backend} if backend else {}
    started = time.perf_counter()
    retriever = BM25Retriever.build(args.corpus, engine=engine, n_threads=1, **options)
    index_s = time.perf_counter() - started
    index_peak_mb = peak_rss_mb()
    slow = engine == "rank_bm25" or backend == "numpy"
    n_queries = args.slow_queries if slow else len(queries)
    retriever.search(queries[:8], k=3)  # warm-up (numba kernels come from the on-disk cache or compile here)
    started = time.perf_counter()
    for start in range(0, n_queries, 512):
        retriever.search(queries[start : min(start + 512, n_queries)], k=3)
    search_s = time.perf_counter() - started
    return {
        "engine": args.engine,
        "index_s": index_s,
        "queries": n_queries,
        "qps": n_queries / search_s,
        "index_peak_mb": index_peak_mb,
        "peak_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss, it does not inherit the parent's peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--slow-queries", type=int, default=16, help="queries timed for rank-bm25 and numpy")
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["bm25s", "bm25s:bm25s-numba", "tantivy", "rank_bm25"],
        help="engine or engine:backend (bm25s backends: numba (ours, default), bm25s-numba, numpy)",
    )
    parser.add_argument("--no-stopwords", action="store_true", help="no stopwords among the frequent words")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    workdir = tempfile.mkdtemp(prefix="bench-bm25-")
    corpus = os.path.join(workdir, "corpus.jsonl")
    started = time.perf_counter()
    generate_corpus(corpus, args.passages, stopwords=not args.no_stopwords)
    queries_file = os.path.join(workdir, "queries.json")
    json.dump(generate_queries(corpus, args.queries), open(queries_file, "w"))
    print(
        f"corpus: {args.passages} passages of 100 words, {args.queries} queries ({time.perf_counter() - started:.0f}s)"
    )

    results = {}
    for engine in args.engines:
        command = [sys.executable, __file__, "--worker", "--engine", engine, "--corpus", corpus]
        command += ["--queries-file", queries_file, "--slow-queries", str(args.slow_queries)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[engine] = json.loads(output.strip().splitlines()[-1])
        r = results[engine]
        print(f"  {engine}: index {r['index_s']:.1f}s, {r['qps']:.1f} q/s over {r['queries']} queries", flush=True)

    print("\n| engine | index build | queries/s (1 core, batch 512, k=3) | peak memory (index / total) |")
    print("|---|---|---|---|")
    for engine, r in results.items():
        print(
            f"| {engine} | {r['index_s']:.1f} s | {r['qps']:,.1f} | {r['index_peak_mb']:,.0f} / {r['peak_mb']:,.0f} MB |"
        )
    if "bm25s" in results:
        default = results["bm25s"]["qps"]
        print(f"\ndefault engine (bm25s + numba kernel): {default:,.0f} q/s on one core (target >= 2,000)")
        for engine, r in results.items():
            if engine != "bm25s":
                print(
                    f"bm25s / {engine}: {default / r['qps']:,.1f}x queries/s, {r['index_s'] / results['bm25s']['index_s']:.2f}x index time"
                )
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
