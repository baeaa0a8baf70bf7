"""The /retrieve server vs direct in-process search, side by side, at 1, 32 and 512 queries per request.

Targets (issue 15): the server reaches >= 0.9x of direct in-process search at >= 32 queries per request and >= 0.6x
at 1 query per request (BM25, bm25s engine, k=3); its hot path is a plain ASGI handler and it merges concurrent
requests into batches. `--workers 1 2` shows how throughput grows with server processes. On a shared machine the
wall-clock ratios move with the background load (printed); the CPU-per-query columns move much less.

    python benchmarks/bench_server.py                               # 100k passages
    python benchmarks/bench_server.py --passages 200000 --workers 1 2

Direct: `retriever.search` called in this process on the same queries, one request's worth at a time, in runs
that alternate with the server's (best of `--repeats` each), so that both see the same background load. Server:
`trl-search serve` in its own process; the load comes from wrk (C, one thread, a Lua script cycling through the
pre-encoded request bodies) when installed, else from one asyncio process sending pre-encoded raw HTTP/1.1 requests
over keep-alive connections, so the load generator costs little CPU next to the server. Both run on the same machine, so on a small box the client still takes some of the server's CPU: the
`server CPU` column gives the server's own cost per query (what it needs when clients have other cores).
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_bm25 import generate_corpus, generate_queries  # noqa: E402


def encode_requests(queries: list[str], size: int, host: str) -> list[bytes]:
    requests = []
    for start in range(0, len(queries), size):
        body = json.dumps({"queries": queries[start : start + size], "topk": 3, "return_scores": True}).encode()
        head = (
            f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        requests.append(head + body)
    return requests


async def _connection(host: str, port: int, requests: list[bytes], answered: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    for request in requests:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"server answered {head[:40]!r}")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        answered.append(1)
    writer.close()


async def _load(host: str, port: int, requests: list[bytes], connections: int) -> float:
    answered: list = []
    shares = [requests[i::connections] for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, share, answered) for share in shares if share))
    return time.perf_counter() - started


def load_process(host: str, port: int, requests: list[bytes], connections: int, out) -> None:
    out.put(asyncio.run(_load(host, port, requests, connections)))


WRK_SCRIPT = """
local bodies, index = {}, 0
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  index = index % #bodies + 1
  return wrk.format(nil, "/retrieve", nil, bodies[index])
end
response = function(status, headers, body)
  if status ~= 200 then error("status " .. status) end
end
"""


def run_wrk(port: int, queries: list[str], size: int, connections: int, seconds: int, workdir: str) -> float:
    """Queries per second under wrk (C, one thread): `connections` keep-alive connections for `seconds`."""
    bodies = os.path.join(workdir, f"bodies-{size}.txt")
    with open(bodies, "w") as handle:
        for start in range(0, len(queries), size):
            handle.write(json.dumps({"queries": queries[start : start + size], "topk": 3, "return_scores": True}))
            handle.write("\n")
    script = os.path.join(workdir, "load.lua")
    with open(script, "w") as handle:
        handle.write(WRK_SCRIPT)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s", "-s", script]
    command.append(f"http://127.0.0.1:{port}")
    output = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "BENCH_BODIES": bodies}, check=True
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    requests_per_s = float(output.split("Requests/sec:")[1].split()[0])
    return requests_per_s * size


def run_load(host: str, port: int, requests: list[bytes], connections: int) -> float:
    """Seconds to send all `requests` over `connections` keep-alive connections, from a separate process."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=load_process, args=(host, port, requests, connections, out))
    process.start()
    seconds = out.get(timeout=900)
    process.join()
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=8192, help="Queries per measurement.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 32, 512], help="Queries per request.")
    parser.add_argument(
        "--connections", type=int, default=32, help="Most concurrent client connections (fewer for large requests)."
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="Server processes to measure.")
    parser.add_argument("--threads", type=int, default=1, help="bm25s query threads (server and direct).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per setting; the best is kept (less noise).")
    parser.add_argument(
        "--load",
        choices=["wrk", "asyncio"],
        default="wrk" if shutil.which("wrk") else "asyncio",
        help="Load generator: wrk (C; `apt-get install wrk`) when installed, else one asyncio process.",
    )
    parser.add_argument("--seconds", type=int, default=5, help="wrk: seconds per run.")
    args = parser.parse_args()

    from trl_search.retrievers import BM25Retriever

    workdir = tempfile.mkdtemp(prefix="bench-server-")
    corpus = os.path.join(workdir, "corpus.jsonl")
    generate_corpus(corpus, args.passages)
    queries = generate_queries(corpus, args.queries)
    BM25Retriever.build(corpus).save(os.path.join(workdir, "index"))
    retriever = BM25Retriever.load(os.path.join(workdir, "index"), n_threads=args.threads)
    load_before = os.getloadavg()
    print(
        f"{args.passages:,} passages, {len(queries):,} queries per run, k=3, {os.cpu_count()} CPUs, "
        f"at most {args.connections} client connections, best of {args.repeats}"
    )

    def measure_direct(size: int) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(queries), size):
            retriever.search(queries[start : start + size], k=3)
        return len(queries) / (time.perf_counter() - started), (time.process_time() - cpu) / len(queries)

    import psutil
    import requests as http

    retriever.search(queries[:64], k=3)
    rows = []
    for workers in args.workers:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "trl_search.cli", "serve", "--retriever", os.path.join(workdir, "index")]
        command += ["--port", str(port), "--workers", str(workers), "--threads", str(args.threads), "--mmap"]
        server = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    http.get(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except http.RequestException:
                    time.sleep(0.1)
            time.sleep(1.0 if workers > 1 else 0.0)  # let every worker finish loading
            processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
            for size in args.sizes:
                # Enough requests in flight to keep the server's batches full, not so many that they time out.
                connections = max(2, min(args.connections, 2048 // size))
                requests = encode_requests(queries, size, "127.0.0.1")
                run_load("127.0.0.1", port, requests[: connections * 2], connections)  # warm up
                direct, server_best = (0.0, 0.0), (0.0, 0.0)
                # Direct and server runs alternate, so that both see the same background load; best of each.
                for _ in range(args.repeats):
                    direct = max(direct, measure_direct(size))
                    cpu = sum(sum(p.cpu_times()[:2]) for p in processes)
                    if args.load == "wrk":
                        qps = run_wrk(port, queries, size, connections, args.seconds, workdir)
                        served = qps * args.seconds
                    else:
                        qps = len(queries) / run_load("127.0.0.1", port, requests, connections)
                        served = len(queries)
                    server_cpu = (sum(sum(p.cpu_times()[:2]) for p in processes) - cpu) / served
                    server_best = max(server_best, (qps, server_cpu))
                rows.append((workers, size, connections, *direct, *server_best))
                print(f"  workers={workers} size={size}: direct {direct[0]:,.0f} server {server_best[0]:,.0f} q/s")
        finally:
            for child in psutil.Process(server.pid).children(recursive=True):
                child.kill()
            server.kill()
            server.wait()

    print(f"\nload generator: {args.load}; load average before/after: {load_before} / {os.getloadavg()}")
    print(
        "| queries/request | server workers | connections | direct q/s | server q/s | server / direct "
        "| CPU µs/query direct | CPU µs/query server |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for workers, size, connections, direct_qps, direct_cpu, server_qps, server_cpu in rows:
        print(
            f"| {size} | {workers} | {connections} | {direct_qps:,.0f} | {server_qps:,.0f} "
            f"| {server_qps / direct_qps:.2f}x | {direct_cpu * 1e6:,.0f} | {server_cpu * 1e6:,.0f} |"
        )
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
