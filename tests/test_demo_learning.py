"""The learning check: a reduced demo on a fixed seed must learn, so that a change that silently breaks training (the
rollout, the mask, the reward, the trainer's wiring) fails the suite. It is the quick mode's seed 0 (same world and
warm start) with 20 RL steps and no controls."""

import pytest

from trl_search.demo.pipeline import DemoConfig, DemoPipeline


@pytest.mark.slow
def test_reduced_demo_learns_to_search_one_and_two_hops(tmp_path):
    results = DemoPipeline(DemoConfig.reduced(output_dir=str(tmp_path), seed=0)).run()
    warm, rl = results["stages"]["warm_start"], results["stages"]["rl_search"]
    # the warm start learnt to copy (its stop criterion), but searches as its imperfect teacher does
    assert results["warm_start"]["stopped_by"] == "copy rate"
    assert warm["two_hop"]["em"] <= 0.2 and warm["two_hop"]["searches_per_sample"] < 1.5
    # RL with search: held-out EM rises by a clear margin, and two-hop questions get their second search
    assert rl["all"]["em"] >= warm["all"]["em"] + 0.2, (warm["all"], rl["all"])
    assert rl["two_hop"]["em"] >= warm["two_hop"]["em"] + 0.2, (warm["two_hop"], rl["two_hop"])
    assert rl["two_hop"]["searches_per_sample"] > warm["two_hop"]["searches_per_sample"] + 0.3
    # without retrieval the answers cannot be found
    assert results["stages"]["warm_start_no_retrieval"]["all"]["em"] <= 0.05
