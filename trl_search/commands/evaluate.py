"""`trl-search eval`: evaluate a model with search (or a baseline) on QA sets and write the paper's table."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the options of `trl-search eval`; multi-word options take `_` or `-` (`--data_dir`, `--data-dir`).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> parser.parse_args(["--model", "m", "--datasets", "demo", "--retriever", "demo"]).retrieval_top_k
        3
    """
    from ..data import PAPER_DATASETS, QA_DATASETS

    parser.add_argument("--model", required=True, help="model directory or Hub id (its tokenizer is loaded with it)")
    parser.add_argument(
        "--retriever",
        default=None,
        help="index directory, http(s) URL of a /retrieve server, a JSONL corpus (indexed with BM25 on the fly) or "
        "'demo' (the shipped demo corpus); not needed with --baseline direct",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(PAPER_DATASETS),
        help=f"comma-separated names among {', '.join(QA_DATASETS)} (default: the paper's seven)",
    )
    parser.add_argument("--limit", type=int, default=None, help="questions per dataset (default: all)")
    parser.add_argument("--baseline", choices=["direct", "rag"], default=None, help="no retrieval, or retrieve once")
    parser.add_argument(
        "--data_dir", "--data-dir", default=None, help="local copy of the data: DIR/<name>/<split>.jsonl"
    )
    parser.add_argument("--split", default=None, help="split to evaluate (default: test, else dev)")
    parser.add_argument(
        "--output_dir", "--output-dir", default="eval_results", help="where results.json/.md and trajectories go"
    )
    parser.add_argument("--label", default=None, help="row label in the markdown table")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32)
    parser.add_argument(
        "--max_turns",
        "--max-turns",
        type=int,
        default=None,
        help="maximum searches per question (default: the model's search_config.json, else 4)",
    )
    parser.add_argument(
        "--retrieval_top_k",
        "--retrieval-top-k",
        type=int,
        default=None,
        help="passages per search (default: the model's search_config.json, else 3)",
    )
    parser.add_argument(
        "--protocol",
        choices=["tags", "tool_call"],
        default=None,
        help="how the model searches: Search-R1's tags, or a search tool called through the chat template (default: "
        "the model's search_config.json, else tags)",
    )
    parser.add_argument(
        "--max_obs_length",
        "--max-obs-length",
        type=int,
        default=None,
        help="maximum tokens per observation (default: the model's search_config.json, else 500)",
    )
    parser.add_argument(
        "--max_tokens_per_turn",
        "--max-tokens-per-turn",
        type=int,
        default=None,
        help="tokens per turn (default: the model's search_config.json, else 500)",
    )
    parser.add_argument(
        "--max_completion_length",
        "--max-completion-length",
        type=int,
        default=None,
        help="tokens per completion (default: the model's search_config.json, else 2048)",
    )
    parser.add_argument(
        "--prompt_template_file",
        "--prompt-template-file",
        default=None,
        help="a text file with a {question} placeholder",
    )
    parser.add_argument(
        "--chat",
        choices=["auto", "yes", "no"],
        default="auto",
        help="apply the chat template (auto: when the tokenizer has one)",
    )
    parser.add_argument(
        "--backend", choices=["transformers", "vllm"], default="transformers", help="generation engine (vllm: fast)"
    )
    parser.add_argument("--vllm_gpu_memory_utilization", "--vllm-gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--vllm_tensor_parallel_size", "--vllm-tensor-parallel-size", type=int, default=1)
    parser.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float16, float32")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    if args.baseline != "direct" and args.retriever is None:
        raise SystemExit("--retriever is required unless --baseline direct (try --retriever demo offline).")
    template = None
    if args.prompt_template_file is not None:
        with open(args.prompt_template_file, encoding="utf-8") as handle:
            template = handle.read()
    results = evaluate(
        args.model,
        args.retriever,
        args.datasets,
        baseline=args.baseline,
        data_dir=args.data_dir,
        split=args.split,
        limit=args.limit,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        max_turns=args.max_turns,
        retrieval_top_k=args.retrieval_top_k,
        max_obs_length=args.max_obs_length,
        max_tokens_per_turn=args.max_tokens_per_turn,
        max_completion_length=args.max_completion_length,
        protocol=args.protocol,
        prompt_template=template,
        conversational={"auto": None, "yes": True, "no": False}[args.chat],
        label=args.label,
        backend=args.backend,
        vllm_kwargs={
            "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
            "tensor_parallel_size": args.vllm_tensor_parallel_size,
            "dtype": args.dtype,
        },
        dtype=args.dtype,
        device=args.device,
        progress=not args.no_progress,
    )
    with open(os.path.join(args.output_dir, "results.md"), encoding="utf-8") as handle:
        print(handle.read())
    print(f"Results, settings and trajectories written to {args.output_dir}/ (results.json, trajectories.jsonl).")
    return 0 if results["datasets"] else 1
