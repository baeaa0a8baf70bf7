"""The offline learning demo: a tiny model learns on a CPU to search an invented encyclopedia, with plots.

    python examples/demo.py --quick                          # a few minutes on 2 CPU cores
    python examples/demo.py --quick --seeds 5 --workers 2    # seeds 0..4: mean, min and max
    python examples/demo.py --output_dir demo_output

Same as `trl-search demo` (options: `trl_search.commands.demo.DemoArguments`); the pipeline lives in
`trl_search/demo/`.
"""

import sys

from trl import TrlParser

from trl_search.commands.demo import DemoArguments, run


if __name__ == "__main__":
    parser = TrlParser(DemoArguments, description=__doc__.split("\n")[0])
    try:
        (args,) = parser.parse_args_and_config()
    except ValueError as error:  # DemoConfig's validation: the message names the option to fix
        parser.error(str(error))
    sys.exit(run(args))
