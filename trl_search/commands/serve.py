"""`trl-search serve`: serve a retriever over HTTP with Search-R1's /retrieve contract."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retriever", required=True, help="Index directory (from `trl-search index`) or http(s) URL.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default: 127.0.0.1, this machine only).")
    parser.add_argument("--port", type=int, default=8000, help="Port (default: 8000, as Search-R1).")
    parser.add_argument(
        "--topk", type=int, default=3, help="Passages per query when a request's topk is missing, null or 0."
    )
    parser.add_argument("--max-queries", type=int, default=4096, help="Queries per request (more: HTTP 422).")
    parser.add_argument("--max-query-chars", type=int, default=4096, help="Characters per query (more: HTTP 422).")
    parser.add_argument(
        "--max-topk",
        type=int,
        default=100,
        help="Largest topk served; a larger one is clamped (X-Topk-Clamped header).",
    )
    parser.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024, help="Request body size limit.")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="How long a batch waits for more requests.")
    parser.add_argument(
        "--max-batch-queries",
        type=int,
        default=512,
        help="Queries per retriever call; larger requests are split and interleaved with others (fairness).",
    )
    parser.add_argument(
        "--max-queued-queries", type=int, default=65536, help="Queries waiting to be searched; beyond: 503."
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        help="Seconds after which a request's unsearched work is dropped.",
    )
    parser.add_argument(
        "--search-threads",
        type=int,
        default=1,
        help="Batches searched at once (helps retrievers that release the GIL: bm25s numba, FAISS).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Server processes sharing the port, each with its own copy of the retriever (use --mmap for BM25).",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="Check the whole index against its manifest's checksums before serving (slow for large indexes).",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TRL_SEARCH_TOKEN"),
        help="Require this bearer token (default: $TRL_SEARCH_TOKEN).",
    )
    parser.add_argument("--cache", type=int, default=0, help="Cache this many recent queries (0: off).")
    parser.add_argument("--mmap", action="store_true", help="BM25: memory-map the index instead of loading it.")
    parser.add_argument("--device", default=None, help="Dense: search device (cpu, cuda; default: cuda if available).")
    parser.add_argument("--threads", type=int, default=1, help="BM25 (bm25s): query threads (-1: all cores).")


def _load_options(args: argparse.Namespace) -> dict:
    """The options `load_retriever` gets for the index kind named in the directory's manifest."""
    from trl_search.retrievers.manifest import read_manifest

    if args.retriever.startswith(("http://", "https://")):
        if args.verify:
            raise ValueError("--verify checks a local index directory; a URL retriever has nothing to verify here.")
        return {}
    options = {}
    kind = read_manifest(args.retriever).get("kind")
    if kind == "bm25":
        options = {"mmap": args.mmap, "n_threads": args.threads}
    elif kind == "dense" and args.device:
        options = {"device": args.device}
    if args.verify:
        options["verify"] = True
    return options


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from trl_search.retrievers import CachedRetriever, InvalidIndexError, load_retriever
    from trl_search.server import WORKER_SPEC_ENV, ServerConfig, serve

    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1; got {args.workers}.")
    try:
        config = ServerConfig(
            default_topk=args.topk,
            max_queries=args.max_queries,
            max_query_chars=args.max_query_chars,
            max_topk=args.max_topk,
            max_body_bytes=args.max_body_bytes,
            batch_wait_ms=args.batch_wait_ms,
            max_batch_queries=args.max_batch_queries,
            max_queued_queries=args.max_queued_queries,
            request_timeout_s=args.request_timeout,
            search_threads=args.search_threads,
            token=args.token or None,
        )
    except ValueError as error:
        raise SystemExit(f"trl-search serve: {error}") from None
    # Opened (and verified) once here even with --workers, so that a bad index fails before any worker starts.
    try:
        options = _load_options(args)
        retriever = load_retriever(args.retriever, **options)
    except (InvalidIndexError, FileNotFoundError, ValueError) as error:  # the user's to fix: no traceback
        raise SystemExit(f"trl-search serve: {error}") from None
    if args.cache:
        retriever = CachedRetriever(retriever, max_entries=args.cache)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        print(
            f"warning: serving on {args.host} without --token: anyone who can reach it can query it.", file=sys.stderr
        )
    print(f"Serving {retriever.describe()} at http://{args.host}:{args.port}/retrieve", file=sys.stderr, flush=True)
    if args.workers > 1:
        options.pop("verify", None)
        os.environ[WORKER_SPEC_ENV] = json.dumps(
            {"retriever": args.retriever, "options": options, "cache": args.cache, "config": asdict(config)}
        )
        del retriever
        serve(None, host=args.host, port=args.port, workers=args.workers)
    else:
        serve(retriever, host=args.host, port=args.port, config=config)
    return 0
