"""`trl-search demo`: the offline learning demo (RL with search beats no search, one- and two-hop), with plots."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field


@dataclass
class DemoArguments:
    """Options of `trl-search demo` and `python examples/demo.py`. Every other knob of the demo (model width,
    warm-start criterion, RL budget, ...) is a field of `trl_search.demo.DemoConfig`; `--quick` picks its shorter
    preset. Multi-word options take `_` or `-`, and `--config x.yaml` reads them from a file.

    Example:
        >>> from trl import TrlParser
        >>> (args,) = TrlParser(DemoArguments).parse_args_and_config(["--quick", "--seeds", "5", "--no-progress"])
        >>> args.seeds, args.progress, demo_config(args).rl_steps
        (5, False, 40)
    """

    quick: bool = field(default=False, metadata={"help": "The shorter run (a few minutes per seed on 2 CPU cores)."})
    output_dir: str = field(default="demo_output", metadata={"help": "Where results, plots and checkpoints go."})
    seed: int = field(default=0, metadata={"help": "Seed of the world, the model, the warm start and RL."})
    seeds: int = field(
        default=1,
        metadata={"help": "Run the whole pipeline for seeds SEED..SEED+N-1 and report the mean, min and max."},
    )
    workers: int = field(default=1, metadata={"help": "Processes running seeds side by side (one thread each)."})
    runs: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated RL runs among rl_search, rl_no_retrieval, rl_no_mask (default: all; --quick: "
            "the first two)."
        },
    )
    rl_steps: int | None = field(default=None, metadata={"help": "RL steps per run (default: the mode's)."})
    protocol: str = field(
        default="tags",
        metadata={
            "help": "How the model searches: Search-R1's tags in a plain prompt, or calls of a `search` tool through "
            "a Qwen2.5 chat template the tiny tokenizer carries (longer sequences: several times slower).",
            "choices": ["tags", "tool_call"],
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress display (`--no_progress`: plain)."})

    def __post_init__(self):
        demo_config(self)  # DemoConfig validates; its error names the option to fix


def demo_config(args: DemoArguments):
    """The `DemoConfig` the options describe: the mode's preset, then the options given."""
    from ..demo import DemoConfig

    overrides = {
        "output_dir": args.output_dir,
        "seed": args.seed,
        "seeds": args.seeds,
        "workers": args.workers,
        "progress": args.progress,
        "protocol": args.protocol,
    }
    if args.runs:
        overrides["runs"] = tuple(name.strip() for name in args.runs.split(","))
    if args.rl_steps is not None:
        overrides["rl_steps"] = args.rl_steps
    return DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)


ARGUMENTS = DemoArguments


def _command_line() -> str:
    """How this run was started, for the results: `python examples/demo.py ...` or `trl-search demo ...`."""
    program = f"python {sys.argv[0]}" if sys.argv[0].endswith(".py") else "trl-search demo"
    arguments = sys.argv[1:] if sys.argv[0].endswith(".py") else sys.argv[2:]
    return " ".join([program, *(shlex.quote(arg) for arg in arguments)])


def run(args: DemoArguments) -> int:
    from ..demo import run_demo
    from ..demo.report import Display

    config = demo_config(args)
    results = run_demo(config, command=_command_line(), display=Display(enabled=config.progress))
    print(f"\n{results['table']}\n\nWrote {args.output_dir}/results.json, results.md and the plots.")
    return 0
