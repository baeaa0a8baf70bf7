"""`trl-search index`: build a BM25 or dense index directory from a JSONL corpus."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus", required=True, help='JSONL corpus: {"id", "contents"} (Search-R1) or {"id", "title", "text"} rows.'
    )
    parser.add_argument(
        "--out", required=True, help="Output directory (written atomically; an existing index is replaced)."
    )
    parser.add_argument("--kind", choices=["bm25", "dense"], default="bm25", help="Index kind (default: bm25).")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    checks = parser.add_argument_group("corpus checks")
    checks.add_argument(
        "--on-bad-text",
        choices=["error", "replace"],
        default="error",
        help="Rows with invalid UTF-8 or lone surrogates: stop with file:line (default), or replace the bad "
        "characters with U+FFFD and count them.",
    )
    checks.add_argument(
        "--allow-duplicate-ids", action="store_true", help="Keep rows whose id repeats an earlier one (counted)."
    )
    bm25 = parser.add_argument_group("bm25")
    bm25.add_argument(
        "--engine", choices=["bm25s", "tantivy", "rank_bm25"], default="bm25s", help="BM25 engine (default: bm25s)."
    )
    bm25.add_argument("--k1", type=float, default=None, help="BM25 k1 (default 0.9; tantivy is fixed at 1.2).")
    bm25.add_argument("--b", type=float, default=None, help="BM25 b (default 0.4; tantivy is fixed at 0.75).")
    bm25.add_argument("--heap-mb", type=int, default=256, help="tantivy: indexing memory budget in MB.")
    dense = parser.add_argument_group("dense")
    dense.add_argument(
        "--encoder", help="sentence-transformers/transformers model name or directory (e.g. intfloat/e5-base-v2)."
    )
    dense.add_argument(
        "--index", choices=["flat", "hnsw", "ivf"], default="flat", help="FAISS index type (default: flat)."
    )
    dense.add_argument(
        "--family",
        choices=["e5", "bge", "contriever", "jina", "none"],
        default=None,
        help="Encoder family, as Search-R1's --retrieval_method: sets prefixes and pooling (default: from the "
        "model name).",
    )
    dense.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        default=None,
        help="Pooling (default: the family's; bge: cls, else mean).",
    )
    dense.add_argument(
        "--query-prefix", default=None, help="Prefix for queries (default: the family's; e5: 'query: ')."
    )
    dense.add_argument(
        "--passage-prefix", default=None, help="Prefix for passages (default: the family's; e5: 'passage: ')."
    )
    dense.add_argument("--max-length", type=int, default=256, help="Tokens per text (default: 256).")
    dense.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="Encoder precision (Search-R1's build script uses float16 on GPU).",
    )
    dense.add_argument("--batch-size", type=int, default=128, help="Texts per encoder forward pass.")
    dense.add_argument("--device", default=None, help="Encoder device (default: cuda if available).")
    dense.add_argument("--ef-search", type=int, default=128, help="HNSW efSearch saved with the index.")
    dense.add_argument("--nlist", type=int, default=1024, help="IVF lists.")
    dense.add_argument("--nprobe", type=int, default=32, help="IVF lists visited per query.")
    dense.add_argument(
        "--faiss-index",
        help="Adopt an existing FAISS index file built from --corpus (e.g. Search-R1's e5_Flat.index) instead of encoding.",
    )


def run(args: argparse.Namespace) -> int:
    from trl_search.indexing import Interrupted, exit_cleanly_on_signals

    # Errors a user can act on are printed without a traceback; SIGTERM/SIGINT clean up before exiting.
    with exit_cleanly_on_signals():
        try:
            return _run(args)
        # CorpusError and InvalidIndexError are ValueErrors; ImportError names the extra to install.
        except (ValueError, ImportError, FileNotFoundError, FileExistsError) as error:
            print(f"trl-search index: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("trl-search index: interrupted; temporary files removed.", file=sys.stderr)
            # Die of SIGINT, as interrupted programs should (a calling shell loop stops too).
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            return 130
        except Interrupted:
            print("trl-search index: terminated; temporary files removed.", file=sys.stderr)
            raise


def _run(args: argparse.Namespace) -> int:
    from trl_search.indexing import adopt_faiss_index, build_index

    started = time.time()
    checks = {"on_bad_text": args.on_bad_text, "allow_duplicate_ids": args.allow_duplicate_ids}
    if args.kind == "dense" or args.faiss_index:
        if not args.encoder:
            raise SystemExit("A dense index needs --encoder (e.g. --encoder intfloat/e5-base-v2).")
        encoder_options = {
            "family": args.family,
            "pooling": args.pooling,
            "query_prefix": args.query_prefix,
            "passage_prefix": args.passage_prefix,
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "device": args.device,
            "dtype": args.dtype,
        }
        if args.faiss_index:
            retriever = adopt_faiss_index(
                args.faiss_index, args.corpus, args.out, encoder=args.encoder, **encoder_options
            )
        else:
            retriever = build_index(
                args.corpus,
                args.out,
                kind="dense",
                show_progress=not args.no_progress,
                encoder=args.encoder,
                index=args.index,
                ef_search=args.ef_search,
                nlist=args.nlist,
                nprobe=args.nprobe,
                **checks,
                **encoder_options,
            )
    else:
        options = {"engine": args.engine, "k1": args.k1, "b": args.b}
        if args.engine == "tantivy":
            options["heap_mb"] = args.heap_mb
        retriever = build_index(
            args.corpus, args.out, kind="bm25", show_progress=not args.no_progress, **checks, **options
        )
    summary = {"out": args.out, "seconds": round(time.time() - started, 1), **retriever.describe()}
    if getattr(retriever, "corpus_stats", None):
        summary["corpus"] = retriever.corpus_stats
    print(json.dumps(summary))
    return 0
