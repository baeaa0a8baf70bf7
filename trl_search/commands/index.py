"""`trl-search index`: build a BM25 or dense index directory from a JSONL corpus."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field


@dataclass
class IndexArguments:
    """Options of `trl-search index`. Multi-word options take `_` or `-` (`--max_length`, `--max-length`), and
    `--config x.yaml` reads them from a file.

    Example:
        >>> from trl import TrlParser
        >>> (args,) = TrlParser(IndexArguments).parse_args_and_config(["--corpus", "c.jsonl", "--out", "idx"])
        >>> args.kind, args.engine, args.max_length
        ('bm25', 'bm25s', 256)
    """

    corpus: str = field(
        metadata={"help": 'JSONL corpus: {"id", "contents"} (Search-R1) or {"id", "title", "text"} rows.'}
    )
    out: str = field(metadata={"help": "Output directory (written atomically; an existing index is replaced)."})
    kind: str = field(default="bm25", metadata={"help": "Index kind.", "choices": ["bm25", "dense"]})
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bar."})
    # corpus checks
    on_bad_text: str = field(
        default="error",
        metadata={
            "help": "Rows with invalid UTF-8 or lone surrogates: stop with file:line (error), or replace the bad "
            "characters with U+FFFD and count them (replace).",
            "choices": ["error", "replace"],
        },
    )
    allow_duplicate_ids: bool = field(
        default=False, metadata={"help": "Keep rows whose id repeats an earlier one (counted)."}
    )
    # bm25
    engine: str = field(
        default="bm25s", metadata={"help": "BM25 engine.", "choices": ["bm25s", "tantivy", "rank_bm25"]}
    )
    k1: float | None = field(default=None, metadata={"help": "BM25 k1 (default 0.9; tantivy is fixed at 1.2)."})
    b: float | None = field(default=None, metadata={"help": "BM25 b (default 0.4; tantivy is fixed at 0.75)."})
    heap_mb: int = field(default=256, metadata={"help": "tantivy: indexing memory budget in MB."})
    # dense
    encoder: str | None = field(
        default=None,
        metadata={"help": "Dense: sentence-transformers/transformers model name or directory (intfloat/e5-base-v2)."},
    )
    index: str = field(
        default="flat", metadata={"help": "Dense: FAISS index type.", "choices": ["flat", "hnsw", "ivf"]}
    )
    family: str | None = field(
        default=None,
        metadata={
            "help": "Dense: encoder family, as Search-R1's --retrieval_method; sets prefixes and pooling (default: "
            "from the model name).",
            "choices": ["e5", "bge", "contriever", "jina", "none"],
        },
    )
    pooling: str | None = field(
        default=None,
        metadata={"help": "Dense: pooling (default: the family's; bge: cls, else mean).", "choices": ["mean", "cls"]},
    )
    query_prefix: str | None = field(
        default=None, metadata={"help": "Dense: prefix for queries (default: the family's; e5: 'query: ')."}
    )
    passage_prefix: str | None = field(
        default=None, metadata={"help": "Dense: prefix for passages (default: the family's; e5: 'passage: ')."}
    )
    max_length: int = field(default=256, metadata={"help": "Dense: tokens per text."})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Dense: encoder precision (Search-R1's build script uses float16 on GPU).",
            "choices": ["float32", "float16", "bfloat16"],
        },
    )
    batch_size: int = field(default=128, metadata={"help": "Dense: texts per encoder forward pass."})
    device: str | None = field(default=None, metadata={"help": "Dense: encoder device (default: cuda if available)."})
    ef_search: int = field(default=128, metadata={"help": "Dense: HNSW efSearch saved with the index."})
    nlist: int = field(default=1024, metadata={"help": "Dense: IVF lists."})
    nprobe: int = field(default=32, metadata={"help": "Dense: IVF lists visited per query."})
    faiss_index: str | None = field(
        default=None,
        metadata={
            "help": "Dense: adopt an existing FAISS index file built from --corpus (e.g. Search-R1's e5_Flat.index) "
            "instead of encoding."
        },
    )

    def __post_init__(self):
        if (self.kind == "dense" or self.faiss_index) and not self.encoder:
            raise ValueError("A dense index needs --encoder (e.g. --encoder intfloat/e5-base-v2).")


ARGUMENTS = IndexArguments


def run(args: IndexArguments) -> int:
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


def _run(args: IndexArguments) -> int:
    from trl_search.indexing import adopt_faiss_index, build_index

    started = time.time()
    checks = {"on_bad_text": args.on_bad_text, "allow_duplicate_ids": args.allow_duplicate_ids}
    if args.kind == "dense" or args.faiss_index:
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
