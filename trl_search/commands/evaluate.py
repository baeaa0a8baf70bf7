"""`trl-search eval`: evaluate a model with search (or a baseline) on QA sets and write the paper's table."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..data import PAPER_DATASETS, QA_DATASETS


@dataclass
class EvalArguments:
    """Options of `trl-search eval`. Rollout settings left unset come from the model's `search_config.json`, else the
    paper's values. Multi-word options take `_` or `-` (`--data_dir`, `--data-dir`), and `--config x.yaml` reads them
    from a file.

    Example:
        >>> from trl import TrlParser
        >>> (args,) = TrlParser(EvalArguments).parse_args_and_config(["--model", "m", "--retriever", "sample"])
        >>> args.retrieval_top_k is None, args.datasets.split(",")[:2]
        (True, ['nq', 'triviaqa'])
    """

    model: str = field(metadata={"help": "Model directory or Hub id (its tokenizer is loaded with it)."})
    retriever: str | None = field(
        default=None,
        metadata={
            "help": "Index directory, http(s) URL of a /retrieve server, a JSONL corpus (indexed with BM25 on the "
            "fly) or 'sample' (the shipped sample corpus); not needed with --baseline direct."
        },
    )
    datasets: str = field(
        default=",".join(PAPER_DATASETS),
        metadata={"help": f"Comma-separated names among {', '.join(QA_DATASETS)} (default: the paper's seven)."},
    )
    limit: int | None = field(default=None, metadata={"help": "Questions per dataset (default: all)."})
    baseline: str | None = field(
        default=None,
        metadata={
            "help": "No retrieval ('direct'), or retrieve once for the question ('rag').",
            "choices": ["direct", "rag"],
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "Local copy of the data: DIR/<name>/<split>.jsonl."})
    split: str | None = field(default=None, metadata={"help": "Split to evaluate (default: test, else dev)."})
    output_dir: str = field(
        default="eval_results", metadata={"help": "Where results.json, results.md and trajectories.jsonl go."}
    )
    label: str | None = field(default=None, metadata={"help": "Row label in the markdown table."})
    batch_size: int = field(default=32, metadata={"help": "Questions rolled out together."})
    protocol: str | None = field(
        default=None,
        metadata={
            "help": "How the model searches: Search-R1's tags, or a search tool called through the chat template "
            "(default: the model's search_config.json, else tags).",
            "choices": ["tags", "tool_call"],
        },
    )
    max_turns: int | None = field(
        default=None, metadata={"help": "Maximum searches per question (default: search_config.json, else 4)."}
    )
    retrieval_top_k: int | None = field(
        default=None, metadata={"help": "Passages per search (default: search_config.json, else 3)."}
    )
    max_obs_length: int | None = field(
        default=None, metadata={"help": "Maximum tokens per observation (default: search_config.json, else 500)."}
    )
    max_tokens_per_turn: int | None = field(
        default=None, metadata={"help": "Tokens per turn (default: search_config.json, else 500)."}
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Tokens per completion (default: search_config.json, else 2048)."}
    )
    prompt_template_file: str | None = field(
        default=None, metadata={"help": "A text file with a {question} placeholder (e.g. Search-R1's prompt)."}
    )
    chat: str = field(
        default="auto",
        metadata={
            "help": "Apply the chat template (auto: when the tokenizer has one).",
            "choices": ["auto", "yes", "no"],
        },
    )
    backend: str = field(
        default="transformers",
        metadata={"help": "Generation engine (vllm: fast, on a GPU).", "choices": ["transformers", "vllm"]},
    )
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM's share of the GPU memory."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs vLLM shards the model over."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, bfloat16, float16, float32."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bar."})

    def __post_init__(self):
        if self.baseline != "direct" and self.retriever is None:
            raise ValueError("--retriever is required unless --baseline direct (try --retriever sample offline).")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be a positive number of questions per dataset, got {self.limit}.")


ARGUMENTS = EvalArguments


def run(args: EvalArguments) -> int:
    from ..evaluation import evaluate

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
