"""The /retrieve server before and after the issue-15 rewrite, side by side in one run, over the same retriever.

The earlier server (FastAPI endpoint with a pydantic body and an `@app.middleware("http")` body-size check) is read
from git (`git show BEFORE:trl_search/server.py`) and run next to the current one: both in threads of this process
under uvicorn with the same settings, loaded in turn by wrk with the same request bodies, alternating with direct
in-process search (best of `--repeats` each), so that all three see the same background load.

    python benchmarks/bench_server_before_after.py                          # 200k passages, before = afbe661
    python benchmarks/bench_server_before_after.py --passages 50000 --sizes 1 32

Needs wrk (`apt-get install wrk`) and a git checkout.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import types


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_bm25 import generate_corpus, generate_queries  # noqa: E402
from bench_server import run_wrk  # noqa: E402


REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def server_module_at(commit: str) -> types.ModuleType:
    """trl_search/server.py as it was at `commit`, imported as a module of the current package."""
    source = subprocess.run(
        ["git", "show", f"{commit}:trl_search/server.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("trl_search._server_before")
    module.__package__ = "trl_search"
    exec(compile(source, f"{commit}:trl_search/server.py", "exec"), module.__dict__)
    return module


def start(app, http: str = "auto", loop: str = "auto"):
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, http=http, loop=loop)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, server.servers[0].sockets[0].getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="afbe661", help="Commit of the earlier server.")
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=8192)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 32, 512])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument(
        "--http",
        default="auto",
        choices=["auto", "h11", "httptools"],
        help="uvicorn's HTTP parser (auto: httptools when installed, as with uvicorn[standard]).",
    )
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="uvicorn's event loop.")
    args = parser.parse_args()

    import psutil

    from trl_search.retrievers import BM25Retriever
    from trl_search.server import create_app

    before = server_module_at(args.before)
    workdir = tempfile.mkdtemp(prefix="bench-server-before-after-")
    corpus = os.path.join(workdir, "corpus.jsonl")
    generate_corpus(corpus, args.passages)
    queries = generate_queries(corpus, args.queries)
    retriever = BM25Retriever.build(corpus)
    retriever.search(queries[:64], k=3)
    servers = {
        "before": start(before.create_app(retriever), args.http, args.loop),
        "after": start(create_app(retriever), args.http, args.loop),
    }
    process = psutil.Process()
    print(
        f"{args.passages:,} passages, k=3, wrk, before = {args.before}, uvicorn http={args.http} loop={args.loop}, "
        f"load average {os.getloadavg()}"
    )

    rows = []
    for size in args.sizes:
        connections = max(2, min(args.connections, 2048 // size))
        best = {"direct": (0.0, 0.0), "before": (0.0, 0.0), "after": (0.0, 0.0)}
        for _ in range(args.repeats):
            started, cpu = time.perf_counter(), time.process_time()
            for start_at in range(0, len(queries), size):
                retriever.search(queries[start_at : start_at + size], k=3)
            qps = len(queries) / (time.perf_counter() - started)
            best["direct"] = max(best["direct"], (qps, (time.process_time() - cpu) / len(queries)))
            for name, (_, port) in servers.items():
                cpu = sum(process.cpu_times()[:2])
                qps = run_wrk(port, queries, size, connections, args.seconds, workdir)
                best[name] = max(best[name], (qps, (sum(process.cpu_times()[:2]) - cpu) / (qps * args.seconds)))
        rows.append((size, best))
        print(f"  size {size}: " + ", ".join(f"{name} {qps:,.0f} q/s" for name, (qps, _) in best.items()), flush=True)
    for server, _ in servers.values():
        server.should_exit = True

    print(f"\nload average after: {os.getloadavg()}")
    print(
        "| queries/request | direct q/s | before q/s (vs direct) | after q/s (vs direct) | CPU µs/query direct / before / after |"
    )
    print("|---|---|---|---|---|")
    for size, best in rows:
        direct, old, new = best["direct"], best["before"], best["after"]
        print(
            f"| {size} | {direct[0]:,.0f} | {old[0]:,.0f} ({old[0] / direct[0]:.2f}x) | {new[0]:,.0f} "
            f"({new[0] / direct[0]:.2f}x) | {direct[1] * 1e6:,.0f} / {old[1] * 1e6:,.0f} / {new[1] * 1e6:,.0f} |"
        )


if __name__ == "__main__":
    main()
