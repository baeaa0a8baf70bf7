"""`trl-search` command line: one subcommand per module in `trl_search.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys


# Subcommand name -> module in trl_search.commands. A module defines `ARGUMENTS` (a dataclass with `help` metadata,
# parsed by TRL's `TrlParser`, so `--config x.yaml` and both `--a_b`/`--a-b` work) and `run(args) -> int`.
SUBCOMMANDS = {
    "index": ("index", "Build a BM25 or dense index from a JSONL corpus."),
    "serve": ("serve", "Serve a retriever over HTTP with Search-R1's /retrieve contract."),
    "eval": ("evaluate", "Evaluate a model with search on QA datasets (exact match, F1, ...)."),
    "demo": ("demo", "Run the offline learning demo (RL with search beats no search)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-search", description="Search-R1 training tools on top of TRL.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in SUBCOMMANDS.items():  # each parsed by TrlParser in `main`; listed for --help
        subparsers.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        build_parser().parse_args(argv)  # prints the usage (or --help) and exits
    module = importlib.import_module(f"trl_search.commands.{SUBCOMMANDS[argv[0]][0]}")
    from trl import TrlParser

    help_text = SUBCOMMANDS[argv[0]][1]
    parser = TrlParser(module.ARGUMENTS, prog=f"trl-search {argv[0]}", description=help_text)
    try:
        (args,) = parser.parse_args_and_config(argv[1:])
    except ValueError as error:  # validation in __post_init__: the message names the option to fix
        parser.error(str(error))
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
