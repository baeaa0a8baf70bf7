"""`trl-search serve`: serve a retriever over HTTP with Search-R1's /retrieve contract."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field


@dataclass
class ServeArguments:
    """Options of `trl-search serve`. Multi-word options take `_` or `-` (`--max_topk`, `--max-topk`), and
    `--config x.yaml` reads them from a file.

    Example:
        >>> from trl import TrlParser
        >>> (args,) = TrlParser(ServeArguments).parse_args_and_config(["--retriever", "indexes/wiki-bm25"])
        >>> args.host, args.port, args.topk
        ('127.0.0.1', 8000, 3)
    """

    retriever: str = field(metadata={"help": "Index directory (from `trl-search index`) or http(s) URL."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (127.0.0.1: this machine only)."})
    port: int = field(default=8000, metadata={"help": "Port (8000, as Search-R1)."})
    topk: int = field(default=3, metadata={"help": "Passages per query when a request's topk is missing, null or 0."})
    max_queries: int = field(default=4096, metadata={"help": "Queries per request (more: HTTP 422)."})
    max_query_chars: int = field(default=4096, metadata={"help": "Characters per query (more: HTTP 422)."})
    max_topk: int = field(
        default=100, metadata={"help": "Largest topk served; a larger one is clamped (X-Topk-Clamped header)."}
    )
    max_body_bytes: int = field(default=32 * 1024 * 1024, metadata={"help": "Request body size limit."})
    batch_wait_ms: float = field(default=2.0, metadata={"help": "How long a batch waits for more requests."})
    max_batch_queries: int = field(
        default=512,
        metadata={
            "help": "Queries per retriever call; larger requests are split and interleaved with others (fairness)."
        },
    )
    max_queued_queries: int = field(default=65536, metadata={"help": "Queries waiting to be searched; beyond: 503."})
    request_timeout: float = field(
        default=300.0, metadata={"help": "Seconds after which a request's unsearched work is dropped."}
    )
    search_threads: int = field(
        default=1,
        metadata={"help": "Batches searched at once (helps retrievers that release the GIL: bm25s numba, FAISS)."},
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "Server processes sharing the port, each with its own copy of the retriever (use --mmap for BM25)."
        },
    )
    verify: bool = field(
        default=False,
        metadata={"help": "Check the whole index against its manifest's checksums before serving (slow if large)."},
    )
    token: str | None = field(
        default_factory=lambda: os.environ.get("TRL_SEARCH_TOKEN"),
        metadata={"help": "Require this bearer token (default: $TRL_SEARCH_TOKEN)."},
    )
    cache: int = field(default=0, metadata={"help": "Cache this many recent queries (0: off)."})
    mmap: bool = field(default=False, metadata={"help": "BM25: memory-map the index instead of loading it."})
    device: str | None = field(
        default=None, metadata={"help": "Dense: search device (cpu, cuda; default: cuda if available)."}
    )
    threads: int = field(default=1, metadata={"help": "BM25 (bm25s): query threads (-1: all cores)."})

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1; got {self.workers}.")


ARGUMENTS = ServeArguments


def _load_options(args: ServeArguments) -> dict:
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


def run(args: ServeArguments) -> int:
    import json
    from dataclasses import asdict

    from trl_search.retrievers import CachedRetriever, InvalidIndexError, load_retriever
    from trl_search.server import WORKER_SPEC_ENV, ServerConfig, serve

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
