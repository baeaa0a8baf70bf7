"""Server memory after maximal requests: does it go back to its idle level?

Claim (issue 15): after a burst of maximal requests (max_queries queries at max_topk passages each) the server's
resident memory returns to within a small margin of its idle level, because answers are encoded slice by slice
(no Passage objects kept for a whole maximal request), large answers are sent without a second copy, and freed heap
pages are handed back to the OS (malloc_trim) after a large answer.

    python benchmarks/bench_server_memory.py                       # 20k passages, 3 rounds of 2 concurrent requests
    python benchmarks/bench_server_memory.py --passages 50000 --rounds 5
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_bm25 import generate_corpus, generate_queries  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument("--max-queries", type=int, default=4096, help="Queries per maximal request.")
    parser.add_argument("--max-topk", type=int, default=100, help="Passages per query in a maximal request.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=2, help="Maximal requests sent at once per round.")
    args = parser.parse_args()

    import psutil
    import requests

    from trl_search.retrievers import BM25Retriever

    workdir = tempfile.mkdtemp(prefix="bench-server-memory-")
    corpus = os.path.join(workdir, "corpus.jsonl")
    generate_corpus(corpus, args.passages)
    queries = generate_queries(corpus, args.max_queries)
    BM25Retriever.build(corpus).save(os.path.join(workdir, "index"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "trl_search.cli", "serve", "--retriever", os.path.join(workdir, "index")]
    command += ["--port", str(port), "--max-queries", str(args.max_queries), "--max-topk", str(args.max_topk)]
    server = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/retrieve"
    try:
        for _ in range(600):
            try:
                requests.get(url.replace("/retrieve", "/health"), timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        process = psutil.Process(server.pid)
        requests.post(url, json={"queries": queries[:64], "topk": 3}, timeout=60)  # warm: kernels compiled
        time.sleep(1.0)
        idle = process.memory_info().rss
        peak, sizes = idle, []

        def maximal():
            body = {"queries": queries, "topk": args.max_topk, "return_scores": True}
            response = requests.post(url, json=body, timeout=600)
            sizes.append(len(response.content))

        for round_index in range(args.rounds):
            threads = [threading.Thread(target=maximal) for _ in range(args.concurrent)]
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.02)
            time.sleep(1.0)
            after = process.memory_info().rss
            print(
                f"round {round_index + 1}: {args.concurrent} x {args.max_queries} queries x top-{args.max_topk} "
                f"({sizes[-1] / 1e6:.0f} MB answers): rss after {after / 1e6:.0f} MB (idle {idle / 1e6:.0f} MB, "
                f"peak so far {peak / 1e6:.0f} MB)",
                flush=True,
            )
    finally:
        server.kill()
        server.wait()
    print(
        f"\nidle {idle / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB, after load {after / 1e6:.0f} MB "
        f"({(after - idle) / 1e6:+.0f} MB vs idle)"
    )


if __name__ == "__main__":
    main()
