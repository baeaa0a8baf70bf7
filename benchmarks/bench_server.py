"""The /retrieve server under concurrent clients vs one client vs direct in-process calls (BM25, bm25s engine).

Claim (issue 3): 8 concurrent client processes sharing one server get >= 0.8x the aggregate queries/s of calling
the retriever directly in-process, because the server merges their requests into one batch.

    python benchmarks/bench_server.py                          # 100k passages, requests of 64 queries, k=3
    python benchmarks/bench_server.py --passages 200000 --request-size 128

The server runs as `trl-search serve` in its own process; each client is its own process with a keep-alive
`RemoteRetriever`, sending requests of `--request-size` queries (one training process's turn) back to back.
"""

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_bm25 import generate_corpus, generate_queries  # noqa: E402


def client(url: str, queries: list[str], request_size: int, start_at: float, results) -> None:
    from trl_search.retrievers import RemoteRetriever

    remote = RemoteRetriever(url, timeout=120)
    remote.search(queries[:2], k=3)  # open the connection
    while time.time() < start_at:
        time.sleep(0.001)
    started = time.perf_counter()
    for start in range(0, len(queries), request_size):
        remote.search(queries[start : start + request_size], k=3)
    results.put((len(queries), started, time.perf_counter()))


def run_clients(url: str, queries: list[str], clients: int, request_size: int) -> float:
    """Aggregate queries/s of `clients` processes, each sending its share of `queries`."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    share = len(queries) // clients
    start_at = time.time() + 3.0
    processes = [
        context.Process(
            target=client, args=(url, queries[i * share : (i + 1) * share], request_size, start_at, results)
        )
        for i in range(clients)
    ]
    for process in processes:
        process.start()
    rows = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    total = sum(count for count, _, _ in rows)
    # Wall time from the first client's start to the last client's end (all started together).
    return total / (max(end for _, _, end in rows) - min(begin for _, begin, _ in rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=16_384)
    parser.add_argument("--request-size", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    from trl_search.retrievers import BM25Retriever

    workdir = tempfile.mkdtemp(prefix="bench-server-")
    corpus = os.path.join(workdir, "corpus.jsonl")
    generate_corpus(corpus, args.passages)
    queries = generate_queries(corpus, args.queries)
    retriever = BM25Retriever.build(corpus)
    retriever.save(os.path.join(workdir, "index"))
    print(f"{args.passages:,} passages, {len(queries):,} queries, requests of {args.request_size}, k=3")

    # Direct, in-process: the same requests, one after another, and the best case of whole 512-query batches.
    retriever.search(queries[:8], k=3)
    direct, direct_cpu = {}, {}
    for size in (args.request_size, 512):
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(queries), size):
            retriever.search(queries[start : start + size], k=3)
        direct[size] = len(queries) / (time.perf_counter() - started)
        direct_cpu[size] = len(queries) / (time.process_time() - cpu)
    del retriever

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "trl_search.cli", "serve", "--retriever", os.path.join(workdir, "index")]
    server = subprocess.Popen([*command, "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/retrieve"
    try:
        import requests

        for _ in range(600):
            try:
                requests.get(url.replace("/retrieve", "/health"), timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        import psutil

        server_process = psutil.Process(server.pid)
        one = run_clients(url, queries[: len(queries) // 4], 1, args.request_size)
        cpu_before = sum(server_process.cpu_times()[:2])
        many = run_clients(url, queries, args.clients, args.request_size)
        # Server CPU per query: what the server costs when its clients run on other cores (a real node).
        server_cpu_qps = len(queries) / (sum(server_process.cpu_times()[:2]) - cpu_before)
        health = requests.get(url.replace("/retrieve", "/health"), timeout=5).json()
    finally:
        server.kill()
        server.wait()

    print("\n| setup | queries/s | vs direct (same request size) |")
    print("|---|---|---|")
    print(f"| direct in-process, batches of {args.request_size} | {direct[args.request_size]:,.0f} | 1.00x |")
    print(
        f"| direct in-process, batches of 512 | {direct[512]:,.0f} | {direct[512] / direct[args.request_size]:.2f}x |"
    )
    print(f"| server, 1 client | {one:,.0f} | {one / direct[args.request_size]:.2f}x |")
    print(f"| server, {args.clients} concurrent clients | {many:,.0f} | {many / direct[args.request_size]:.2f}x |")
    merged = health["queries"] / max(1, health["batches"])
    print(
        f"\nserver merged {health['requests']:,} requests into {health['batches']:,} batches ({merged:.0f} queries/batch)"
    )
    print(f"{args.clients} clients vs 1 client: {many / one:.2f}x; vs direct: {many / direct[args.request_size]:.2f}x")
    cpu_ratio = server_cpu_qps / direct_cpu[args.request_size]
    print(
        f"queries per CPU-second: server process {server_cpu_qps:,.0f} vs direct {direct_cpu[args.request_size]:,.0f} "
        f"({cpu_ratio:.2f}x): the server's capacity relative to in-process search when clients have their own cores"
    )
    print(json.dumps({"direct": direct, "one_client": one, "clients": many}))


if __name__ == "__main__":
    main()
