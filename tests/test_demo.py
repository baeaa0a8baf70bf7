"""The learning demo at toy size: every stage runs and writes its outputs (it learns nothing in two steps)."""

import json
import os

import pytest

from trl_search.demo import RL_RUNS, DemoConfig, DemoPipeline, EmptyRetriever, tokenize_demonstration
from trl_search.demo_report import results_table


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("demo"))
    pipeline = DemoPipeline(DemoConfig.toy(output_dir=output_dir))
    return pipeline, pipeline.run(), output_dir


def test_every_stage_runs_and_writes_its_outputs(toy_results):
    _, results, output_dir = toy_results
    for name in ("results.json", "results.md", "training_curves.png", "searches.png"):
        assert os.path.getsize(os.path.join(output_dir, name)) > 0, name
    with open(os.path.join(output_dir, "results.json")) as handle:
        saved = json.load(handle)
    expected = {"warm_start", "warm_start_no_retrieval", *RL_RUNS}
    assert set(saved["stages"]) == expected
    for stage in saved["stages"].values():
        assert 0.0 <= stage["em"] <= 1.0 and stage["searches_per_question"] >= 0.0
    for run in RL_RUNS:
        curves = saved["curves"][run]["0"]
        assert [point[0] for point in curves["reward"]] == [1, 2]
        assert [point[0] for point in curves["heldout_em"]] == [0, 1, 2]
        assert len(curves["searches_per_sample"]) == 2
    assert saved["stages"]["rl_no_retrieval"]["answer_retrieved"] == 0.0
    assert os.path.isfile(os.path.join(output_dir, "eval", "warm_start", "trajectories.jsonl"))
    markdown = open(os.path.join(output_dir, "results.md")).read()
    assert results_table(results) in markdown and "RL with BM25 (Search-R1)" in markdown


def test_demonstrations_are_tokenised_as_the_rollout_builds_them(toy_results):
    pipeline, _, _ = toy_results
    demo = next(demo for demo in pipeline.demonstrations if demo.kind != "guess")
    masked = tokenize_demonstration(demo, pipeline.tokenizer, pipeline.protocol, 200, observation_loss=False)
    learnt = [token for token, label in zip(masked["input_ids"], masked["labels"]) if label != -100]
    policy_text = "".join(text for kind, text in demo.segments if kind == "policy")
    assert pipeline.tokenizer.decode(learnt, skip_special_tokens=True) == policy_text
    observation = pipeline.tokenizer.decode(masked["input_ids"], skip_special_tokens=True)
    assert "<information>Doc 1(Title: " in observation
    full = tokenize_demonstration(demo, pipeline.tokenizer, pipeline.protocol, 200, observation_loss=True)
    assert full["input_ids"] == masked["input_ids"]
    assert sum(label != -100 for label in full["labels"]) > len(learnt)


def test_empty_retriever_finds_nothing():
    assert EmptyRetriever().search(["a", "b"], k=3) == [[], []]
