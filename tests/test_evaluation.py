import json
import os

import pytest

from trl_search.cli import main
from trl_search.data import DEFAULT_PROMPT_TEMPLATE, SAMPLE_QUESTIONS_PATH, load_qa_dataset
from trl_search.evaluation import METRICS, evaluate, results_markdown, summarize
from trl_search.generation import GeneratedTurn
from trl_search.rewards import cover_exact_match_reward, exact_match_reward, f1_reward
from trl_search.rollout import RolloutOutput, rollout_metrics


def read_outputs(directory):
    with open(os.path.join(directory, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    with open(os.path.join(directory, "trajectories.jsonl"), encoding="utf-8") as handle:
        trajectories = [json.loads(line) for line in handle]
    with open(os.path.join(directory, "results.md"), encoding="utf-8") as handle:
        markdown = handle.read()
    return results, trajectories, markdown


def assert_consistent(results, trajectories):
    """Every aggregate in results.json is recomputed here from the trajectory lines alone."""
    assert sum(entry["num_questions"] for entry in results["datasets"].values()) == len(trajectories)
    for name, metrics in results["datasets"].items():
        rows = [row for row in trajectories if row["data_source"] == name]
        completions, golds = [row["completion"] for row in rows], [row["golden_answers"] for row in rows]
        assert metrics["em"] == pytest.approx(sum(exact_match_reward(completions, golds)) / len(rows))
        assert metrics["f1"] == pytest.approx(sum(f1_reward(completions, golds)) / len(rows))
        assert metrics["cover_em"] == pytest.approx(sum(cover_exact_match_reward(completions, golds)) / len(rows))
        assert metrics["searches_per_sample"] == pytest.approx(sum(row["num_searches"] for row in rows) / len(rows))
        invalid, turns = sum(row["num_invalid"] for row in rows), sum(row["num_turns"] for row in rows)
        assert metrics["invalid_action_rate"] == pytest.approx(invalid / turns)
        assert metrics["turns_per_sample"] == pytest.approx(turns / len(rows))
        assert metrics["answered_ratio"] == pytest.approx(sum(row["answered"] for row in rows) / len(rows))
        tokens = sum(row["completion_tokens"] for row in rows)
        injected = tokens - sum(row["policy_tokens"] for row in rows)
        assert metrics["masked_token_ratio"] == pytest.approx(injected / tokens)
        found = [row["answer_retrieved"] for row in rows if row["answer_retrieved"] is not None]
        assert metrics["answer_retrieved_ratio"] == (pytest.approx(sum(found) / len(found)) if found else None)
        assert all(len(row["queries"]) == row["num_searches"] for row in rows)
    names = list(results["datasets"])
    average_em = sum(results["datasets"][name]["em"] for name in names) / len(names)
    assert results["average"]["em"] == pytest.approx(average_em)


def test_cli_eval_on_sample_data_with_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        tiny_model_dir,
        "--retriever",
        "sample",
        "--datasets",
        "sample",
        "--limit",
        "4",
        "--max_turns",
        "1",
        "--max-tokens-per-turn",
        "12",
        "--output_dir",
        str(out),
        "--no_progress",
    ]
    assert main(argv) == 0
    results, trajectories, markdown = read_outputs(out)
    assert len(trajectories) == 4
    assert [row["id"] for row in trajectories] == load_qa_dataset("sample", limit=4)["id"]
    assert_consistent(results, trajectories)
    assert results["prompt_template"] == DEFAULT_PROMPT_TEMPLATE
    assert results["conversational"] is True  # the tiny tokenizer has a chat template
    assert results["rollout"]["max_turns"] == 1 and results["rollout"]["retrieval_top_k"] == 3
    assert results["retriever"]["class"] == "BM25Retriever"
    assert results["model"] == tiny_model_dir
    assert results["datasets"]["sample"]["split"] == "test"
    assert markdown.startswith("| Method | Sample | Avg. |\n|---|---|---|\n| search | ")
    em = f"{results['datasets']['sample']['em']:.3f}"
    assert f"| EM | {em} | {em} |" in markdown
    for row in trajectories:  # the random model writes no valid action: every turn it takes is invalid
        assert row["completion_tokens"] >= row["policy_tokens"] > 0
        assert row["answer_retrieved"] in (True, False)


class OracleGenerator:
    """A `TurnGenerator` that searches for the question once, then answers it: right for the questions in `right`,
    wrong for the others. Without a search budget (the baselines) it answers at once."""

    def __init__(self, tokenizer, answers: dict[str, str], right: set[str], stray_answer: str = ""):
        self.tokenizer, self.answers, self.right = tokenizer, answers, right
        self.eos_token_ids = [tokenizer.eos_token_id]
        self.stray_answer = stray_answer  # written, unclosed, while thinking before the search

    def generate(self, contexts, max_new_tokens, stop_strings):
        turns = []
        for context, limit in zip(contexts, max_new_tokens):
            text = self.tokenizer.decode(context, skip_special_tokens=True)
            question = text.rsplit("Question: ", 1)[1].split("\n", 1)[0].strip()
            answer = self.answers[question] if question in self.right else "Nobody Knows"
            searched = "<information>" in text.split("Question: ")[-1]
            if searched or "between <search>" not in text:
                turn = f"<think>got it</think><answer> {answer} </answer>"
            else:
                turn = f"<think>look it up{self.stray_answer}</think><search> {question} </search>"
            ids = self.tokenizer(turn, add_special_tokens=False)["input_ids"][:limit]
            turns.append(GeneratedTurn(token_ids=ids, stopped=len(ids) < limit or turn.endswith(tuple(stop_strings))))
        return turns


@pytest.fixture(scope="module")
def sample_oracle(tiny_tokenizer):
    dataset = load_qa_dataset("sample", limit=6)
    answers = dict(zip(dataset["question"], (golds[0] for golds in dataset["golden_answers"])))
    right = set(dataset["question"][::2])  # half right: EM 0.5
    return OracleGenerator(tiny_tokenizer, answers, right)


def test_evaluate_aggregates_scripted_trajectories(tiny_tokenizer, sample_oracle, tmp_path):
    results = evaluate(
        None,
        "sample",
        ["sample"],
        tokenizer=tiny_tokenizer,
        generator=sample_oracle,
        limit=6,
        output_dir=str(tmp_path),
        batch_size=4,
        conversational=False,
        progress=False,
    )
    on_disk, trajectories, markdown = read_outputs(tmp_path)
    assert on_disk["datasets"] == results["datasets"]
    assert_consistent(results, trajectories)
    sample = results["datasets"]["sample"]
    assert sample["num_questions"] == 6
    assert sample["em"] == pytest.approx(0.5)
    assert sample["searches_per_sample"] == 1.0 and sample["invalid_action_rate"] == 0.0
    assert sample["answered_ratio"] == 1.0 and sample["format_valid"] == 1.0
    # The sample data's single-hop questions are answerable by a search for the question itself.
    assert sample["answer_retrieved_ratio"] == pytest.approx(sum(row["answer_retrieved"] for row in trajectories) / 6)
    assert sample["answer_retrieved_ratio"] > 0
    for row in trajectories:
        assert row["queries"] == [row["question"]]
        assert row["em"] == float(row["answer"] == row["golden_answers"][0])
        assert row["stop_reason"] == "answer"
    assert "| search | 0.500 | 0.500 |" in markdown


def test_evaluate_several_datasets_from_a_local_copy(tiny_tokenizer, sample_oracle, tmp_path):
    # Sample questions laid out as FlashRAG's Hub repository, under two of the paper's dataset names.
    with open(SAMPLE_QUESTIONS_PATH, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][:6]
    for name, part in (("nq", rows[:4]), ("hotpotqa", rows[4:])):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part))
    results = evaluate(
        None,
        "sample",
        "hotpotqa,nq",
        tokenizer=tiny_tokenizer,
        generator=sample_oracle,
        batch_size=3,
        data_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "out"),
        label="oracle",
        conversational=False,
        progress=False,
    )
    _, trajectories, markdown = read_outputs(tmp_path / "out")
    assert_consistent(results, trajectories)
    assert results["complete"] and list(results["datasets"]) == ["hotpotqa", "nq"]
    assert [results["datasets"][name]["num_questions"] for name in ("hotpotqa", "nq")] == [2, 4]
    assert {results["datasets"][name]["split"] for name in ("hotpotqa", "nq")} == {"test"}
    # The oracle is right on questions 0, 2 and 4: EM 1/2 on both sets, and the average is over datasets.
    assert results["datasets"]["nq"]["em"] == 0.5 and results["datasets"]["hotpotqa"]["em"] == 0.5
    assert markdown.splitlines()[:3] == [
        "| Method | HotpotQA | NQ | Avg. |",
        "|---|---|---|---|",
        "| oracle | 0.500 | 0.500 | 0.500 |",
    ]


@pytest.mark.parametrize("baseline", ["direct", "rag"])
def test_baselines_use_the_same_harness(baseline, tiny_tokenizer, sample_oracle, tmp_path):
    results = evaluate(
        None,
        "sample",
        "sample",
        tokenizer=tiny_tokenizer,
        generator=sample_oracle,
        limit=6,
        baseline=baseline,
        output_dir=str(tmp_path),
        conversational=False,
        progress=False,
    )
    _, trajectories, markdown = read_outputs(tmp_path)
    assert_consistent(results, trajectories)
    sample = results["datasets"]["sample"]
    assert results["rollout"]["max_turns"] == 0 and sample["searches_per_sample"] == 0.0
    assert sample["em"] == pytest.approx(0.5)
    assert markdown.splitlines()[2].startswith(f"| {baseline} | 0.500 |")
    if baseline == "direct":
        assert results["retriever"] is None and sample["answer_retrieved_ratio"] is None
        assert "{passages}" not in results["prompt_template"]
    else:
        assert results["retriever"]["class"] == "BM25Retriever"
        assert all(row["prompt_passages"].startswith("Doc 1(Title: ") for row in trajectories)
        assert sample["answer_retrieved_ratio"] > 0


def test_vllm_backend_is_wired_to_the_rollout(tiny_model_dir, tiny_tokenizer, sample_oracle, tmp_path, monkeypatch):
    """`backend="vllm"` builds `vllm.LLM` from the model path and generates greedily with stop strings, per-row
    limits and the model's EOS ids. vLLM is not installed here: a stand-in module answers like the oracle."""
    import sys
    import types

    import trl.generation.vllm_generation  # noqa: F401  (TRL probes for vLLM on import: import it before the stand-in)

    engines = []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    class LLM:
        def __init__(self, model, **kwargs):
            self.model, self.kwargs, self.params = model, kwargs, []
            engines.append(self)

        def generate(self, prompts, sampling_params, use_tqdm=True):
            outputs = []
            for prompt, params in zip(prompts, sampling_params):
                self.params.append(params)
                turn = sample_oracle.generate([prompt["prompt_token_ids"]], [params.max_tokens], params.stop)[0]
                completion = types.SimpleNamespace(
                    token_ids=turn.token_ids, logprobs=None, finish_reason="stop" if turn.stopped else "length"
                )
                outputs.append(types.SimpleNamespace(outputs=[completion]))
            return outputs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    results = evaluate(
        tiny_model_dir,
        "sample",
        "sample",
        limit=6,
        backend="vllm",
        output_dir=str(tmp_path),
        vllm_kwargs={"gpu_memory_utilization": 0.5},
        conversational=False,
        progress=False,
    )
    _, trajectories, _ = read_outputs(tmp_path)
    assert_consistent(results, trajectories)
    assert results["datasets"]["sample"]["em"] == pytest.approx(0.5)
    assert results["generation"]["generator"] == "VLLMColocateGenerator"
    assert results["generation"]["vllm_kwargs"] == {"gpu_memory_utilization": 0.5}
    (engine,) = engines
    assert engine.model == tiny_model_dir and engine.kwargs == {"gpu_memory_utilization": 0.5}
    assert {params.temperature for params in engine.params} == {0.0}  # greedy
    assert all(
        params.stop == ["</search>", "</answer>"] and params.include_stop_str_in_output for params in engine.params
    )


def test_summarize_and_markdown_layout():
    row = {
        "em": 0.0,
        "f1": 0.5,
        "cover_em": 1.0,
        "num_searches": 2,
        "num_invalid": 1,
        "num_turns": 4,
        "answer_retrieved": None,
        "answered": True,
        "format_valid": False,
        "completion_tokens": 10,
        "policy_tokens": 6,
    }
    summary = summarize([row, {**row, "em": 1.0, "num_invalid": 0}])
    # One vocabulary: the rollout statistics carry the names the trainer logs as `search/<name>`.
    sums = {name: 1.0 for name in RolloutOutput(samples=[]).statistic_sums()}
    assert set(rollout_metrics(sums)) <= set(summary) and set(rollout_metrics(sums)) <= set(METRICS)
    assert summary["searches_per_sample"] == 2.0 and summary["turns_per_sample"] == 4.0
    assert summary["answered_ratio"] == 1.0 and summary["masked_token_ratio"] == pytest.approx(0.4)
    assert summary["em"] == 0.5 and summary["invalid_action_rate"] == 1 / 8
    assert summary["answer_retrieved_ratio"] is None  # nothing retrieved: kept, as None
    results = {"label": "Search-R1", "datasets": {"nq": summary, "hotpotqa": summary}, "average": summary}
    lines = results_markdown(results).splitlines()
    assert lines[:3] == [
        "| Method | NQ | HotpotQA | Avg. |",
        "|---|---|---|---|",
        "| Search-R1 | 0.500 | 0.500 | 0.500 |",
    ]
    assert "| Gold answer retrieved | – | – | – |" in lines


def test_evaluate_validates_its_arguments(tiny_tokenizer):
    with pytest.raises(ValueError, match="limit"):
        evaluate(None, "sample", "sample", tokenizer=tiny_tokenizer, limit=0)
    with pytest.raises(ValueError, match="backend"):
        evaluate(None, "sample", "sample", tokenizer=tiny_tokenizer, backend="sglang")
    with pytest.raises(ValueError, match="baseline"):
        evaluate(None, None, "sample", tokenizer=tiny_tokenizer, baseline="oracle")
    with pytest.raises(ValueError, match="retriever"):
        evaluate(None, None, "sample", tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(object(), "sample", "sample")
    with pytest.raises(ValueError, match="passages"):  # caught before any model is loaded
        evaluate("no/such-model", "sample", "sample", baseline="rag", prompt_template="{question}")
    with pytest.raises(ValueError, match="Unknown dataset"):
        evaluate("no/such-model", "sample", "sample,nope")
    with pytest.raises(ValueError, match="now called 'sample'.*--datasets sample"):
        evaluate("no/such-model", "sample", "demo")
    with pytest.raises(ValueError, match="now called 'sample'.*--retriever sample"):
        evaluate("no/such-model", "demo", "sample")


def test_evaluation_reads_the_search_settings_saved_with_the_model(tiny_model_dir, tmp_path):
    import shutil

    from trl_search.hub import save_search_settings

    model_dir = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, model_dir)
    template = "Find it with search tags, answer with answer tags.\nQuestion: {question}\n"
    saved = {
        "prompt_template": template,
        "prompt_format": "text",
        "max_turns": 2,
        "retrieval_top_k": 1,
        "max_obs_length": 40,
    }
    save_search_settings(str(model_dir), {**saved, "max_tokens_per_turn": 8, "max_completion_length": 96})

    results = evaluate(str(model_dir), "sample", "sample", limit=2, max_turns=1, progress=False)

    assert results["prompt_template"] == template and results["conversational"] is False
    assert results["rollout"]["max_turns"] == 1  # given explicitly: wins over the saved value
    assert results["rollout"]["retrieval_top_k"] == 1 and results["rollout"]["max_obs_length"] == 40
    assert results["rollout"]["max_tokens_per_turn"] == 8 and results["rollout"]["max_completion_length"] == 96


def test_evaluate_scores_the_executed_answer_not_a_span_through_the_passages(tiny_tokenizer, tmp_path):
    """An unclosed `<answer>` while thinking used to make the scored span run through the retrieved passages to the
    final `</answer>`: all answers right, yet EM 0."""
    dataset = load_qa_dataset("sample", limit=4)
    answers = dict(zip(dataset["question"], (golds[0] for golds in dataset["golden_answers"])))
    oracle = OracleGenerator(tiny_tokenizer, answers, set(answers), stray_answer=" <answer> perhaps")
    results = evaluate(
        None, "sample", ["sample"], tokenizer=tiny_tokenizer, generator=oracle, limit=4, output_dir=str(tmp_path),
        max_turns=1, progress=False,
    )  # fmt: skip
    _, trajectories, _ = read_outputs(tmp_path)
    assert all("<answer> perhaps" in row["completion"] for row in trajectories)
    assert [row["answer"] for row in trajectories] == [answers[row["question"]] for row in trajectories]
    assert results["datasets"]["sample"]["em"] == 1.0
    assert_consistent(results, trajectories)
