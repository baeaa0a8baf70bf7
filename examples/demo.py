"""The offline learning demo: a tiny model learns on a CPU to search an invented encyclopedia, with plots.

    python examples/demo.py --quick                          # a few minutes on 2 CPU cores
    python examples/demo.py --quick --seeds 5 --workers 2    # seeds 0..4: mean, min and max
    python examples/demo.py --output_dir demo_output

Same as `trl-search demo`; the pipeline lives in `trl_search/demo/`.
"""

import argparse
import sys

from trl_search.commands.demo import add_arguments, run


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
