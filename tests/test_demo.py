"""The learning demo at toy size: every stage runs and writes its outputs (it learns nothing in a few steps), the same
seed gives the same results, several seeds aggregate, and the warm start stops on its copy-rate criterion."""

import json
import os

import pytest

from trl_search.demo.pipeline import (
    RL_RUNS,
    DemoConfig,
    DemoPipeline,
    EmptyRetriever,
    demonstration_rows,
    deterministic_torch,
    run_demo,
    teacher_rollout,
)
from trl_search.demo.report import results_table
from trl_search.demo.world import Plan, TeacherGenerator, TeacherSkill, make_plans


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
    assert set(saved["stages"]) == {"warm_start", "warm_start_no_retrieval", *RL_RUNS}
    for stage in saved["stages"].values():
        assert set(stage) == {"all", "one_hop", "two_hop"}
        for metrics in stage.values():
            assert 0.0 <= metrics["em"] <= 1.0 and 0.0 <= metrics["searches_per_sample"] <= 2.0
    for run in RL_RUNS:
        curves = saved["curves"][run]
        assert [point[0] for point in curves["reward"]] == [1, 2]
        assert [point["step"] for point in curves["heldout"]] == [0, 1, 2]
        assert {"em_one_hop", "em_two_hop", "searches_one_hop", "searches_two_hop"} <= set(curves["heldout"][0])
    assert saved["stages"]["rl_no_retrieval"]["all"]["answer_retrieved_ratio"] == 0.0
    # the toy cannot reach the copy rate: the warm start ran to its cap, checking every 2 steps
    assert saved["warm_start"]["stopped_by"] == "step cap" and saved["warm_start"]["steps"] == 4
    assert [point[0] for point in saved["warm_start"]["copy_rate"]] == [2, 4]
    assert os.path.isfile(os.path.join(output_dir, "eval", "warm_start", "trajectories.jsonl"))
    markdown = open(os.path.join(output_dir, "results.md")).read()
    assert results_table(results) in markdown and "RL with BM25 (Search-R1)" in markdown


def test_same_seed_same_results(toy_results, tmp_path):
    _, first, _ = toy_results
    again = DemoPipeline(DemoConfig.toy(output_dir=str(tmp_path))).run()
    assert again["stages"] == first["stages"] and again["curves"] == first["curves"]
    assert again["warm_start"]["loss"] == first["warm_start"]["loss"]


def test_demonstrations_come_from_the_rollout_with_labels_on_policy_tokens(toy_results):
    pipeline, _, _ = toy_results
    config = pipeline.config
    questions = pipeline.world.train_questions
    plans = make_plans(questions, TeacherSkill.perfect(), pipeline.world.answer_pool, seed=0)
    with deterministic_torch(1):
        prompt_ids, output = teacher_rollout(questions, plans, pipeline.retriever, pipeline.tokenizer, config)
    tokenizer = pipeline.tokenizer
    masked = demonstration_rows(prompt_ids, output.samples, observation_loss=False)
    drills = demonstration_rows(prompt_ids, output.samples, observation_loss=False, tokenizer=tokenizer)
    for row, drill, sample, question in zip(masked, drills, output.samples, questions):
        learnt = tokenizer.decode([token for token, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert "<information>" not in learnt and learnt.count("<search>") == sample.num_searches
        assert learnt.endswith(f"<answer> {question['golden_answers'][0]} </answer>")
        drilled = tokenizer.decode(
            [token for token, label in zip(drill["input_ids"], drill["labels"]) if label != -100]
        )
        # a drill teaches the names only: never the start of a turn (the action, the query's first word)
        assert "<search>" not in drilled and "<answer>" not in drilled and "capital" not in drilled
        assert drilled.endswith(f" {question['golden_answers'][0]} </answer>")
        assert drilled.startswith(
            " " + (question["land"] if question["type"] == "one_hop" else question["bridge_value"])
        )
    full = demonstration_rows(prompt_ids, output.samples, observation_loss=True)
    assert all(a["input_ids"] == b["input_ids"] for a, b in zip(full, masked))
    assert sum(label != -100 for row in full for label in row["labels"]) > sum(
        label != -100 for row in masked for label in row["labels"]
    )


def test_copy_probe_scores_what_the_answerer_writes(toy_results):
    from trl_search.rewards import exact_match_reward

    pipeline, _, _ = toy_results
    questions = pipeline.world.dev_questions
    golds = [question["golden_answers"] for question in questions]
    perfect = make_plans(questions, TeacherSkill.perfect(), pipeline.world.answer_pool, seed=0)
    wrong = TeacherGenerator(pipeline.tokenizer, [Plan(plan.question, "guess", "Nobody Here") for plan in perfect])
    with deterministic_torch(1):
        _, output = teacher_rollout(
            questions, perfect, pipeline.retriever, pipeline.tokenizer, pipeline.config, answerer=wrong
        )
        rates = pipeline.copy_rate(pipeline.model)
    texts = [pipeline.tokenizer.decode(sample.completion_ids, skip_special_tokens=True) for sample in output.samples]
    assert all(text.endswith("Nobody Here </answer>") for text in texts)
    assert exact_match_reward(texts, golds) == [0.0] * len(questions)
    assert set(rates) == {"all", "one_hop", "two_hop"} and all(0.0 <= rate <= 1.0 for rate in rates.values())


def test_several_seeds_report_mean_min_and_max(tmp_path):
    config = DemoConfig.toy(output_dir=str(tmp_path), seeds=2, runs=("rl_search",), sft_max_steps=2)
    results = run_demo(config, command="trl-search demo --seeds 2")
    em = results["stages"]["rl_search"]["all"]["em"]
    assert set(em) == {"mean", "min", "max", "values"} and len(em["values"]) == 2
    assert em["min"] <= em["mean"] <= em["max"]
    assert results["seeds"] == [0, 1] and set(results["curves"]["rl_search"]) == {"0", "1"}
    for seed in (0, 1):
        assert os.path.isfile(tmp_path / f"seed{seed}" / "results.json")
    markdown = (tmp_path / "results.md").read_text()
    assert "trl-search demo --seeds 2" in markdown and "Seeds 0..1" in markdown and "–" in markdown


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError, match="Unknown RL runs"):
        DemoConfig(runs=("rl_search", "rl_magic"))
    with pytest.raises(ValueError, match="max_turns must be >= 2"):
        DemoConfig(max_turns=1)
    with pytest.raises(ValueError, match="sft_copy_threshold"):
        DemoConfig(sft_copy_threshold=1.5)
    with pytest.raises(ValueError, match="DemoPipeline runs one seed"):
        DemoPipeline(DemoConfig.toy(seeds=2))


def test_protocol_settings_default_per_protocol():
    tags, tool_call = DemoConfig(), DemoConfig(protocol="tool_call")
    assert (tags.vocab_size, tags.max_tokens_per_turn, tags.max_obs_length, tags.max_completion_length) == (
        800,
        16,
        64,
        160,
    )
    assert tool_call.max_tokens_per_turn > tags.max_tokens_per_turn and tool_call.vocab_size > tags.vocab_size
    assert DemoConfig(protocol="tool_call", max_tokens_per_turn=24).max_tokens_per_turn == 24  # explicit wins
    toy = DemoConfig.toy()
    assert (toy.vocab_size, toy.max_tokens_per_turn, toy.max_obs_length, toy.max_completion_length) == (400, 6, 48, 96)
    with pytest.raises(ValueError, match="Unknown protocol"):
        DemoConfig(protocol="json")


@pytest.fixture(scope="module")
def tool_call_results(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("demo_tool_call"))
    pipeline = DemoPipeline(DemoConfig.toy(protocol="tool_call", output_dir=output_dir, runs=("rl_search",)))
    return pipeline, pipeline.run(), output_dir


def test_tool_call_run_completes_and_records_its_protocol(tool_call_results):
    pipeline, results, output_dir = tool_call_results
    with open(os.path.join(output_dir, "results.json")) as handle:
        saved = json.load(handle)
    assert saved["config"]["protocol"] == "tool_call" and set(saved["stages"]) == {
        "warm_start",
        "warm_start_no_retrieval",
        "rl_search",
    }
    assert saved["model"]["prompt_tokens"] > 100  # the template's system prompt shows the search tool
    with open(os.path.join(output_dir, "eval", "rl_search", "results.json")) as handle:
        assert json.load(handle)["rollout"]["protocol"] == "tool_call"
    assert pipeline.tokenizer.eos_token == "<|im_end|>" and pipeline.protocol.name == "tool_call"
    # every word of the training lands is one token after a space (in questions, queries, passages), and so is every
    # training answer's first word bare (a tool-call answer starts with its name, right after the template's newline)
    encode = lambda text: pipeline.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for land in pipeline.world.train_lands:
        for word in " ".join([land.name, *land.values.values()]).split():
            assert len(encode(" " + word)) == 1, word
    for question in pipeline.world.train_questions:
        assert len(encode(question["golden_answers"][0].split()[0])) == 1, question


def test_tool_call_demonstrations_train_the_assistant_turns_only(tool_call_results):
    pipeline, _, _ = tool_call_results
    tokenizer, questions = pipeline.tokenizer, pipeline.world.train_questions
    plans = make_plans(questions, TeacherSkill.perfect(), pipeline.world.answer_pool, seed=0)
    with deterministic_torch(1):
        prompt_ids, output = teacher_rollout(questions, plans, pipeline.retriever, tokenizer, pipeline.config)
    masked = demonstration_rows(prompt_ids, output.samples, observation_loss=False)
    drills = demonstration_rows(prompt_ids, output.samples, observation_loss=False, tokenizer=tokenizer)
    for row, drill, sample, question in zip(masked, drills, output.samples, questions):
        assert sample.num_searches == (1 if question["type"] == "one_hop" else 2)
        learnt = tokenizer.decode([token for token, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert learnt.count("<tool_call>") == sample.num_searches and "<tool_response>" not in learnt
        assert "<|im_start|>" not in learnt and learnt.endswith(f"{question['golden_answers'][0]}<|im_end|>")
        drilled = tokenizer.decode(
            [token for token, label in zip(drill["input_ids"], drill["labels"]) if label != -100]
        )
        # a drill teaches the names: never a call's start (the action, the query's first word)
        assert "<tool_call>" not in drilled and '"query"' not in drilled and "capital" not in drilled
        assert drilled.endswith(f"{question['golden_answers'][0]}<|im_end|>")
    with deterministic_torch(1):
        rates = pipeline.copy_rate(pipeline.model)
    assert set(rates) == {"all", "one_hop", "two_hop"}


def test_empty_retriever_finds_nothing():
    assert EmptyRetriever().search(["a", "b"], k=3) == [[], []]


def test_quiet_logs_restores_the_callers_logging():
    import logging

    import transformers

    from trl_search.demo.pipeline import quiet_logs

    logger = logging.getLogger("trl_search")
    level, verbosity = logger.level, transformers.logging.get_verbosity()
    logger.setLevel(logging.INFO)
    try:
        with quiet_logs():
            assert logger.level == logging.ERROR
            assert transformers.logging.get_verbosity() == transformers.logging.ERROR
        assert logger.level == logging.INFO and transformers.logging.get_verbosity() == verbosity
    finally:
        logger.setLevel(level)


def test_sigterm_during_a_several_seed_run_exits_through_python():
    """The worker pool of `--seeds N` is terminated by the pool's context exit, so SIGTERM must unwind the parent."""
    import os
    import signal

    from trl_search.demo.pipeline import _exit_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as raised:
        with _exit_on_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler right after the call returns
    assert raised.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
