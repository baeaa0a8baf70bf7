"""`trl-search serve`: serve a retriever over HTTP with Search-R1's /retrieve contract."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retriever", required=True, help="Index directory (from `trl-search index`) or http(s) URL.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default: 127.0.0.1, this machine only).")
    parser.add_argument("--port", type=int, default=8000, help="Port (default: 8000, as Search-R1).")
    parser.add_argument("--topk", type=int, default=3, help="Passages per query when a request gives no topk.")
    parser.add_argument("--max-queries", type=int, default=4096, help="Queries per request.")
    parser.add_argument("--max-query-chars", type=int, default=4096, help="Characters per query.")
    parser.add_argument("--max-topk", type=int, default=100, help="Largest topk a request may ask for.")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="How long a batch waits for more requests.")
    parser.add_argument(
        "--token",
        default=os.environ.get("TRL_SEARCH_TOKEN"),
        help="Require this bearer token (default: $TRL_SEARCH_TOKEN).",
    )
    parser.add_argument("--cache", type=int, default=0, help="Cache this many recent queries (0: off).")
    parser.add_argument("--mmap", action="store_true", help="BM25: memory-map the index instead of loading it.")
    parser.add_argument("--device", default=None, help="Dense: search device (cpu, cuda; default: cuda if available).")
    parser.add_argument("--threads", type=int, default=1, help="BM25 (bm25s): query threads (-1: all cores).")


def run(args: argparse.Namespace) -> int:
    from trl_search.retrievers import CachedRetriever, load_retriever
    from trl_search.retrievers.manifest import read_manifest
    from trl_search.server import ServerConfig, serve

    options = {}
    if not args.retriever.startswith(("http://", "https://")):
        kind = read_manifest(args.retriever).get("kind")
        if kind == "bm25":
            options = {"mmap": args.mmap, "n_threads": args.threads}
        elif kind == "dense" and args.device:
            options = {"device": args.device}
    retriever = load_retriever(args.retriever, **options)
    if args.cache:
        retriever = CachedRetriever(retriever, max_entries=args.cache)
    config = ServerConfig(
        default_topk=args.topk,
        max_queries=args.max_queries,
        max_query_chars=args.max_query_chars,
        max_topk=args.max_topk,
        batch_wait_ms=args.batch_wait_ms,
        token=args.token,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(
            f"warning: serving on {args.host} without --token: anyone who can reach it can query it.", file=sys.stderr
        )
    print(f"Serving {retriever.describe()} at http://{args.host}:{args.port}/retrieve", file=sys.stderr, flush=True)
    serve(retriever, host=args.host, port=args.port, config=config)
    return 0
