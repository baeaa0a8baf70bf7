"""The offline learning demo: a tiny model learns, on a CPU, to search an invented encyclopedia, one- and two-hop.

- `pipeline`: the stages (world, warm start, RL, controls) and `run_demo`;
- `world`: the demo's invented lands, its questions, prompts and imperfect teacher;
- `report`: the progress display, `results.json` / `results.md` and the plots.

Example:
    >>> from trl_search.demo import DemoConfig
    >>> DemoConfig.quick().rl_steps
    40
"""

from .pipeline import DemoConfig, DemoPipeline, run_demo


__all__ = ["DemoConfig", "DemoPipeline", "run_demo"]
