"""`trl-search demo`: the offline learning demo (RL with search beats no search, one- and two-hop), with plots."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the options of `trl-search demo` (also those of `python examples/demo.py`).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> parser.parse_args(["--quick", "--seeds", "5"]).seeds
        5
    """
    parser.add_argument("--quick", action="store_true", help="a shorter run (a few minutes per seed on 2 CPU cores)")
    parser.add_argument("--output_dir", "--output-dir", default="demo_output", help="where results and plots go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, the model, the warm start and RL")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run the whole pipeline for seeds SEED..SEED+N-1 and report the mean, min and max over them",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes running seeds side by side (one thread each)"
    )
    parser.add_argument(
        "--runs",
        default=None,
        help="comma-separated RL runs among rl_search, rl_no_retrieval, rl_no_mask (default: all; --quick: the "
        "first two)",
    )
    parser.add_argument("--rl_steps", "--rl-steps", type=int, default=None, help="override the number of RL steps")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress display")


def _command_line() -> str:
    """How this run was started, for the results: `python examples/demo.py ...` or `trl-search demo ...`."""
    program = f"python {sys.argv[0]}" if sys.argv[0].endswith(".py") else "trl-search"
    return " ".join([program, *(shlex.quote(arg) for arg in sys.argv[1:])])


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo
    from ..demo.report import Display

    overrides = {"output_dir": args.output_dir, "seed": args.seed, "seeds": args.seeds, "workers": args.workers}
    if args.runs:
        overrides["runs"] = tuple(name.strip() for name in args.runs.split(","))
    if args.rl_steps is not None:
        overrides["rl_steps"] = args.rl_steps
    if args.no_progress:
        overrides["progress"] = False
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    display = Display(enabled=config.progress)
    results = run_demo(config, command=_command_line(), display=display)
    print(f"\n{results['table']}\n\nWrote {args.output_dir}/results.json, results.md and the plots.")
    return 0
