"""SearchGRPOConfig validation names the flag to change."""

import pytest

from trl_search import SearchGRPOConfig


def config(**overrides):
    return SearchGRPOConfig(output_dir="out", use_cpu=True, bf16=False, report_to="none", **overrides)


def test_defaults_follow_the_paper():
    args = config()
    assert (args.max_turns, args.retrieval_top_k, args.max_obs_length, args.mask_retrieved_tokens) == (4, 3, 500, True)
    assert args.search_protocol == "tags" and args.top_k == 0  # TRL's sampling top-k keeps its meaning
    assert args.max_obs_length < args.max_completion_length


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"max_turns": -1}, "--max_turns"),
        ({"retrieval_top_k": 0}, "--retrieval_top_k"),
        ({"max_obs_length": 600, "max_completion_length": 512}, "--max_obs_length"),
        ({"max_obs_length": 4}, "--max_obs_length"),
        ({"search_protocol": "xml"}, "--search_protocol"),
        ({"max_tokens_per_turn": 0}, "max_tokens_per_turn"),
    ],
)
def test_bad_settings_name_the_fix(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        config(**overrides)


def test_no_search_needs_no_observation_room():
    assert config(max_turns=0, max_obs_length=600, max_completion_length=512).max_turns == 0
