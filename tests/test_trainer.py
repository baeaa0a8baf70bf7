"""SearchGRPOTrainer end to end: real TRL training steps on a tiny offline model."""

import json

import pytest
import torch
from datasets import Dataset

from trl_search import SearchGRPOConfig, SearchGRPOTrainer
from trl_search.retrievers import BM25Retriever

from .scripted import script_model_forward


CORPUS = [
    {"id": "0", "contents": '"Veldoria"\nVeldoria is a country whose capital is Quarnel.'},
    {"id": "1", "contents": '"Brantis"\nThe city of Brantis was founded by Ostavel the Elder.'},
    {"id": "2", "contents": '"Mirr"\nThe river Mirr flows through Ostavel and Tesk.'},
]
QUESTIONS = [
    ("[s0] What is the capital of Veldoria?", ["Quarnel"]),
    ("[s1] Who founded Brantis?", ["Ostavel the Elder", "Ostavel"]),
]
# Per prompt, two trajectories: the GRPO group of each prompt then holds a right and a wrong answer.
SCRIPTS = {
    "[s0]": [
        ["<think> look it up </think> <search> capital of Veldoria </search>", "<answer> Quarnel </answer>"],
        ["<think> guess </think> <answer> Tesk </answer>"],
    ],
    "[s1]": [
        ["<search> Brantis founder </search>", "<think> found </think> <answer> Ostavel </answer>"],
        ["<search> who founded Brantis city </search>", "<answer> Mirr </answer>"],
    ],
}


def make_config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        max_completion_length=160,
        max_tokens_per_turn=32,
        max_obs_length=64,
        max_turns=2,
        retrieval_top_k=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    settings.update(overrides)
    return SearchGRPOConfig(**settings)


def make_dataset():
    return Dataset.from_list([{"prompt": q, "golden_answers": a} for q, a in QUESTIONS] * 4)


class CapturingTrainer(SearchGRPOTrainer):
    """Records what TRL's loss receives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_inputs = []

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.loss_inputs.append({key: inputs[key].detach().clone() for key in ("completion_ids", "tool_mask")})
        return super().compute_loss(model, inputs, *args, **kwargs)


@pytest.mark.parametrize("mask_retrieved_tokens", [True, False])
def test_two_steps_update_the_weights_and_the_mask_reaches_the_loss(
    tmp_path, tiny_model, tiny_tokenizer, mask_retrieved_tokens
):
    script_model_forward(tiny_model, tiny_tokenizer, SCRIPTS)
    trainer = CapturingTrainer(
        model=tiny_model,
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS),
        args=make_config(tmp_path, mask_retrieved_tokens=mask_retrieved_tokens),
        train_dataset=make_dataset(),
    )
    rollouts = []
    run = trainer.search_rollout.run
    trainer.search_rollout.run = lambda *a, **k: rollouts.append(run(*a, **k)) or rollouts[-1]
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}

    trainer.train()

    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(before[name], p.detach())]
    assert changed, "two GRPO steps with non-zero advantages must change the weights"
    # Every row TRL trains on carries exactly the rollout's env_mask as its tool_mask (padding aside).
    env_masks = {tuple(s.completion_ids): s.env_mask for output in rollouts for s in output.samples}
    observed = 0
    for captured in trainer.loss_inputs:
        for ids, tool_mask in zip(captured["completion_ids"].tolist(), captured["tool_mask"].tolist()):
            key = next(
                k
                for k in env_masks
                if tuple(ids[: len(k)]) == k and all(t == tiny_tokenizer.pad_token_id for t in ids[len(k) :])
            )
            assert tool_mask[: len(key)] == env_masks[key]
            observed += 1
            injected = len(key) - sum(env_masks[key])
            if mask_retrieved_tokens and "<information>" in tiny_tokenizer.decode(list(key)):
                assert injected >= 20  # the observation (and the final EOS) is masked
            if not mask_retrieved_tokens:
                assert injected <= 1  # only the EOS appended after </answer>
    assert observed == 2 * 4  # two steps of 4 completions (2 prompts x 2 generations)
    logged = [entry for entry in trainer.state.log_history if "search/searches_per_sample" in entry]
    assert len(logged) == len(rollouts) == 2
    for entry, output in zip(logged, rollouts):
        samples = output.samples
        assert entry["search/searches_per_sample"] == pytest.approx(sum(s.num_searches for s in samples) / 4)
        found = [s.answer_in_retrieval for s in samples if s.answer_in_retrieval is not None]
        assert entry["search/answer_retrieved_ratio"] == pytest.approx(sum(found) / len(found))
        assert entry["search/answered_ratio"] == 1.0
        assert entry["search/invalid_action_rate"] == 0.0
        assert entry["search/turns_per_sample"] == pytest.approx(sum(s.num_turns for s in samples) / 4)
        assert entry["search/retriever_calls"] == 1.0
        assert entry["rewards/exact_match_reward/mean"] == pytest.approx(0.5)  # each group: one right, one wrong
        assert (entry["search/masked_token_ratio"] > 0.2) == mask_retrieved_tokens


def test_reward_functions_receive_the_search_extras(tmp_path, tiny_model, tiny_tokenizer):
    script_model_forward(tiny_model, tiny_tokenizer, SCRIPTS)
    seen = []

    def recording_reward(
        completions, golden_answers, num_searches, search_queries, answer_in_retrieval, predicted_answer, **kwargs
    ):
        seen.append((completions, golden_answers, num_searches, search_queries, answer_in_retrieval, predicted_answer))
        return [float(n) for n in num_searches]

    trainer = SearchGRPOTrainer(
        model=tiny_model,
        reward_funcs=recording_reward,
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS),
        args=make_config(tmp_path, max_steps=1),
        train_dataset=make_dataset(),
    )
    trainer.train()
    completions, golds, num_searches, queries, in_retrieval, answers = seen[0]
    assert {answer for answer in answers} <= {"Quarnel", "Tesk", "Ostavel", "Mirr"}
    for completion, gold, n, q, found, answer in zip(completions, golds, num_searches, queries, in_retrieval, answers):
        assert n == len(q) == completion.count("<information>")
        assert completion.rstrip().endswith(f"<answer> {answer} </answer>")  # the answer the rollout executed
        if "Quarnel </answer>" in completion:
            assert gold == ["Quarnel"] and q == ["capital of Veldoria"] and found is True
        if n == 0:
            assert found is False


def test_quickstart_with_a_local_model_directory_and_corpus(tmp_path, tiny_model_dir):
    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text("".join(json.dumps(row) + "\n" for row in CORPUS))
    dataset = make_dataset()

    retriever = BM25Retriever.build(str(corpus_path))
    trainer = SearchGRPOTrainer(
        model=tiny_model_dir,
        retriever=retriever,
        args=make_config(tmp_path, max_turns=4, retrieval_top_k=3, max_completion_length=256),
        train_dataset=dataset,
    )
    trainer.train()

    assert trainer.state.global_step == 2
    assert trainer.args.retrieval_top_k == 3 and trainer.generation_config.top_k in (0, None)
    assert any("search/searches_per_sample" in entry for entry in trainer.state.log_history)


def test_top_k_keeps_its_trl_meaning_and_retrieval_depth_is_retrieval_top_k(tmp_path, tiny_model, tiny_tokenizer):
    # A TRL YAML with `top_k: 50` must mean sampling top-k, never 50 passages per search.
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS),
        args=make_config(tmp_path, retrieval_top_k=3, top_k=7),
        train_dataset=make_dataset(),
    )
    assert trainer.args.retrieval_top_k == 3 and trainer.search_rollout.retrieval_top_k == 3
    assert trainer.generation_config.top_k == 7 and trainer.top_k == 7


def test_trainer_refuses_what_it_cannot_honour(tmp_path, tiny_model, tiny_tokenizer):
    common = dict(model=tiny_model, processing_class=tiny_tokenizer, train_dataset=make_dataset())
    with pytest.raises(ValueError, match="needs a retriever"):
        SearchGRPOTrainer(args=make_config(tmp_path), **common)
    with pytest.raises(ValueError, match="rollout_func"):
        SearchGRPOTrainer(
            args=make_config(tmp_path), retriever=BM25Retriever.build(CORPUS), rollout_func=print, **common
        )
    with pytest.raises(FileNotFoundError, match="trl-search index"):
        SearchGRPOTrainer(args=make_config(tmp_path), retriever=str(tmp_path), **common)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("vllm_structured_outputs_regex", r"<answer>.*</answer>"),
        ("use_transformers_continuous_batching", True),
        ("max_tool_calling_iterations", 3),
        ("generation_kwargs", {"max_new_tokens": 8}),
    ],
)
def test_settings_the_search_rollout_does_not_honour_are_refused_by_name(
    tmp_path, tiny_model, tiny_tokenizer, setting, value
):
    args = make_config(tmp_path, **{setting: value})
    with pytest.raises(ValueError, match=setting if setting != "generation_kwargs" else "max_new_tokens"):
        SearchGRPOTrainer(
            model=tiny_model,
            processing_class=tiny_tokenizer,
            retriever=BM25Retriever.build(CORPUS),
            args=args,
            train_dataset=make_dataset(),
        )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "[s0] capital?", "answer": "Quarnel"}], "no 'golden_answers' column"),
        ([{"question": "capital?", "golden_answers": ["Quarnel"]}], "no 'prompt' column"),
        (
            [{"prompt": "[s0] capital?", "golden_answers": ["Quarnel"]}, {"prompt": " ", "golden_answers": ["x"]}],
            "row 1",
        ),
    ],
)
def test_unusable_datasets_fail_at_construction(tmp_path, tiny_model, tiny_tokenizer, rows, message):
    with pytest.raises(ValueError, match=message):
        SearchGRPOTrainer(
            model=tiny_model,
            processing_class=tiny_tokenizer,
            retriever=BM25Retriever.build(CORPUS),
            args=make_config(tmp_path),
            train_dataset=Dataset.from_list(rows),
        )


def test_a_reward_without_golden_answers_needs_no_such_column(tmp_path, tiny_model, tiny_tokenizer):
    def length_reward(completions, **kwargs):
        return [float(len(completion)) for completion in completions]

    trainer = SearchGRPOTrainer(
        model=tiny_model,
        reward_funcs=length_reward,
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS),
        args=make_config(tmp_path),
        train_dataset=Dataset.from_list([{"prompt": "[s0] capital?"}] * 4),
    )
    assert trainer.reward_funcs[0] is length_reward


def test_prompts_longer_than_the_context_are_warned_about(tmp_path, tiny_model, tiny_tokenizer):
    script_model_forward(tiny_model, tiny_tokenizer, SCRIPTS)
    tiny_model.config.max_position_embeddings = 100  # the rollout's budget (160) alone exceeds it
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS),
        args=make_config(tmp_path, max_steps=1),
        train_dataset=make_dataset(),
    )
    with pytest.warns(UserWarning, match="exceed the model's context of 100 tokens"):
        trainer.train()


def test_a_cached_retriever_reports_its_hit_rate_each_step(tmp_path, tiny_model, tiny_tokenizer):
    from trl_search.retrievers import CachedRetriever

    script_model_forward(tiny_model, tiny_tokenizer, SCRIPTS)
    cached = CachedRetriever(BM25Retriever.build(CORPUS))
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        processing_class=tiny_tokenizer,
        retriever=cached,
        args=make_config(tmp_path, max_steps=3),
        train_dataset=make_dataset(),
    )
    trainer.train()
    rates = [entry["search/cache_hit_rate"] for entry in trainer.state.log_history if "search/cache_hit_rate" in entry]
    assert len(rates) == 3 and all(0.0 <= rate <= 1.0 for rate in rates)
    assert rates[0] == 0.0 and max(rates[1:]) > 0.0  # the scripted queries repeat from the second step on


def test_a_corpus_file_spec_is_resolved_by_the_one_resolver(tmp_path, tiny_model, tiny_tokenizer):
    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text("".join(json.dumps(row) + "\n" for row in CORPUS))
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        processing_class=tiny_tokenizer,
        retriever=str(corpus_path),
        args=make_config(tmp_path),
        train_dataset=make_dataset(),
    )
    assert type(trainer.retriever).__name__ == "BM25Retriever"
    assert trainer.retriever.search(["capital of Veldoria"], k=1)[0][0].id == "0"


def test_importing_the_rewards_loads_no_index_library():
    import subprocess
    import sys

    code = "import sys, trl_search.rewards; print(sorted(m for m in ('numpy', 'bm25s', 'numba', 'torch') if m in sys.modules))"
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert process.returncode == 0 and process.stdout.strip() == "[]", process.stdout + process.stderr
