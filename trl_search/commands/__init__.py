"""Subcommands of the `trl-search` command line; each module defines `add_arguments(parser)` and `run(args)`."""
