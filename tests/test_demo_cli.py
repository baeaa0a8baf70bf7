"""`trl-search demo` and `python examples/demo.py`: one dataclass of options, parsed by TRL's TrlParser."""

import subprocess
import sys

import pytest

from trl_search.cli import main
from trl_search.commands.demo import DemoArguments, demo_config


def parse(argv):
    from trl import TrlParser

    (args,) = TrlParser(DemoArguments).parse_args_and_config(argv)
    return args


def test_quick_preset_then_the_options_given():
    config = demo_config(parse(["--quick", "--rl-steps", "7", "--runs", "rl_search", "--seed", "3"]))
    assert (config.rl_steps, config.runs, config.seed) == (7, ("rl_search",), 3)
    assert demo_config(parse([])).runs == ("rl_search", "rl_no_retrieval", "rl_no_mask")
    assert demo_config(parse(["--quick"])).runs == ("rl_search", "rl_no_retrieval")
    tool_call = demo_config(parse(["--quick", "--protocol", "tool_call"]))
    assert tool_call.protocol == "tool_call" and tool_call.sft_copy_threshold == 0.8


def test_options_from_a_yaml_file(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("quick: true\nseeds: 3\nworkers: 2\nprogress: false\n")
    args = parse(["--config", str(path)])
    assert (args.quick, args.seeds, args.workers, args.progress) == (True, 3, 2, False)


@pytest.mark.parametrize(
    "argv, message",
    [(["--seeds", "0"], "seeds must be >= 1"), (["--runs", "rl_search,rl_magic"], "Unknown RL runs ['rl_magic']")],
)
def test_bad_options_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["demo", *argv])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_the_example_script_parses_the_same_options():
    result = subprocess.run(
        [sys.executable, "examples/demo.py", "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    for option in ("--quick", "--seeds", "--workers", "--no_progress"):
        assert option in result.stdout
