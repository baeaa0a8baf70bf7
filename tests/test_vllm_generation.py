"""vLLM backends of the search rollout, against fakes of the exact interfaces TRL calls (see tests/fake_vllm.py)."""

import math
import sys

import pytest
import torch

from trl_search import SearchGRPOTrainer
from trl_search.retrievers import BM25Retriever
from trl_search.rollout import SearchRollout
from trl_search.vllm_generation import VLLMColocateGenerator, VLLMServerGenerator

from .fake_vllm import FakeLLM, FakeVLLMClient, ScriptedEngine, fake_vllm_module, install_fake_vllm
from .test_trainer import CORPUS, SCRIPTS, make_config, make_dataset


STOPS = ["</search>", "</answer>"]


class SingleProcess:
    num_processes, process_index, is_main_process = 1, 0, True


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def make_generator(mode, tokenizer, scripts):
    engine = ScriptedEngine(tokenizer, scripts)
    if mode == "colocate":
        llm = FakeLLM(engine)
        return VLLMColocateGenerator(llm, {"temperature": 1.0, "logprobs": 0}, [tokenizer.eos_token_id]), llm, engine
    client = FakeVLLMClient(engine)
    generator = VLLMServerGenerator(
        client, {"temperature": 1.0, "top_k": 0, "logprobs": 0}, tokenizer, [tokenizer.eos_token_id], SingleProcess()
    )
    return generator, client, engine


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_turn_stops_at_the_tag_with_per_row_limits_and_real_logprobs(monkeypatch, tiny_tokenizer, mode):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    scripts = {
        "[a]": [["<search> capital of Veldoria </search>"]],
        "[b]": [["<think> I need to find the capital of Veldoria. </think> <answer> Quarnel </answer>"]],
        "[c]": [["<think> Quarnel </think><EOS>"]],
    }
    generator, backend, engine = make_generator(mode, tiny_tokenizer, scripts)
    contexts = [encode(tiny_tokenizer, f"Question: {marker}") for marker in ("[a]", "[b]", "[c]")]
    turns = generator.generate(contexts, [40, 6, 40], STOPS)

    search, cut, answer = turns
    assert tiny_tokenizer.decode(search.token_ids).strip().endswith("</search>")  # nothing generated past the tag
    assert "filler" not in tiny_tokenizer.decode(search.token_ids) and search.stopped
    assert len(cut.token_ids) == 6 and not cut.stopped  # its own max_tokens, not the batch's
    assert answer.token_ids[-1] == tiny_tokenizer.eos_token_id and answer.stopped
    for turn in turns:
        assert turn.logprobs == engine.reported[tuple(turn.token_ids)]
        assert turn.logprobs[0] != turn.logprobs[1]  # the sampled token's logprob, position by position
    if mode == "colocate":
        (params,) = backend.calls
        assert [p.max_tokens for p in params] == [40, 6, 40]
        assert all(p.stop == STOPS and p.include_stop_str_in_output and p.n == 1 for p in params)
    else:  # one request per distinct token limit, stop strings in the body as vLLM's completions route reads them
        assert sorted(body["max_tokens"] for body in backend.requests) == [6, 40]
        assert all(body["stop"] == STOPS and body["include_stop_str_in_output"] for body in backend.requests)
        assert sum(len(body["prompt"]) for body in backend.requests) == 3
    assert generator.generate([], [], STOPS) == []


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_rollout_keeps_sampling_logprobs_and_zero_on_injected_tokens(monkeypatch, tiny_tokenizer, mode):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    scripts = {"[s0]": [["<search> capital of Veldoria </search>", "<answer> Quarnel </answer>"]]}
    generator, backend, engine = make_generator(mode, tiny_tokenizer, scripts)
    retriever = BM25Retriever.build(CORPUS, backend="numpy")
    rollout = SearchRollout(retriever, tiny_tokenizer, max_turns=2, retrieval_top_k=1, max_completion_length=200)
    output = rollout.run([encode(tiny_tokenizer, "Question: [s0]")], generator, [["Quarnel"]], with_logprobs=True)

    (sample,) = output.samples
    assert sample.answered and sample.num_searches == 1
    assert len(sample.logprobs) == len(sample.completion_ids) == len(sample.env_mask)
    reported = [lp for ids, lps in engine.reported.items() for lp in lps]
    sampled = [lp for lp, mask in zip(sample.logprobs, sample.env_mask) if mask == 1]
    assert sampled == reported  # every sampled token carries the engine's logprob, in order
    # injected tokens were not sampled: NaN, which TRL reads as "no correction" (ratio 1), never a fake 0.0
    assert all(math.isnan(lp) for lp, mask in zip(sample.logprobs, sample.env_mask) if mask == 0)


class CapturingTrainer(SearchGRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.batches.append({key: value for key, value in output.items() if isinstance(value, torch.Tensor)})
        return output


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_trainer_trains_on_vllm_rollouts_with_synced_weights(monkeypatch, tmp_path, tiny_model, tiny_tokenizer, mode):
    fakes = install_fake_vllm(monkeypatch, tiny_tokenizer, SCRIPTS, mode)
    initial = {name: param.detach().clone() for name, param in tiny_model.named_parameters()}
    trainer = CapturingTrainer(
        model=tiny_model,
        args=make_config(tmp_path, use_vllm=True, vllm_mode=mode, vllm_importance_sampling_correction=True),
        train_dataset=make_dataset(),
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS, backend="numpy"),
    )
    trainer.train()

    engine = fakes.llm if mode == "colocate" else fakes.client
    # TRL syncs the weights before each step's rollout: the first push is the initial model, the second the updated.
    assert len(engine.loaded_weights) == 2
    first, second = engine.loaded_weights
    assert set(first) == set(initial)
    assert all(torch.equal(first[name], initial[name]) for name in initial)
    assert any(not torch.equal(second[name], initial[name]) for name in initial)

    for batch in trainer.batches:
        completion_ids, tool_mask = batch["completion_ids"], batch["tool_mask"]
        logps = batch["sampling_per_token_logps"]
        assert (tool_mask == 0).any() and (tool_mask == 1).any()  # passages were injected and masked
        for row in range(completion_ids.shape[0]):
            sampled = [
                logps[row, i].item()
                for i in range(completion_ids.shape[1])
                if tool_mask[row, i] and batch["completion_mask"][row, i]
            ]
            assert all(not math.isnan(lp) and lp < 0 for lp in sampled)
        text = tiny_tokenizer.batch_decode(completion_ids)
        assert not any("filler" in row for row in text)  # every turn stopped at its tag
    # The engine's logprobs come from the synced weights: the importance-sampling ratio against the trained model is
    # 1 at both steps (a stale sync or misaligned logprobs would move it), and the policy gets a gradient.
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert entry["search/searches_per_sample"] > 0
        assert entry["sampling/importance_sampling_ratio/mean"] == pytest.approx(1.0, abs=1e-3)
        assert entry["sampling/sampling_logp_difference/max"] < 1e-3
        assert entry["grad_norm"] > 0


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_unmasked_observations_get_no_importance_correction(monkeypatch, tmp_path, tiny_model, tiny_tokenizer, mode):
    """The paper's no-mask ablation under vLLM: injected tokens are trained but were never sampled, so they must not
    enter TRL's importance-sampling ratio. With a fake sampling logprob of 0.0 the sequence ratio was
    exp(sum(old_logp - 0)) ~ 0 over the passages, which zeroed the loss of every sample that searched."""
    install_fake_vllm(monkeypatch, tiny_tokenizer, SCRIPTS, mode)
    trainer = CapturingTrainer(
        model=tiny_model,
        args=make_config(
            tmp_path,
            use_vllm=True,
            vllm_mode=mode,
            vllm_importance_sampling_correction=True,
            vllm_importance_sampling_mode="sequence_mask",
            mask_retrieved_tokens=False,
        ),
        train_dataset=make_dataset(),
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS, backend="numpy"),
    )
    trainer.train()

    for batch in trainer.batches:
        # passages are trained: at most the appended final EOS is masked in a row
        masked = (batch["tool_mask"] == 0) & batch["completion_mask"].bool()
        assert (masked.sum(dim=1) <= 1).all()
        assert batch["importance_sampling_ratio"].min().item() == pytest.approx(1.0, abs=1e-3)
        # the injected tokens carry NaN sampling logprobs, the sampled ones real values
        assert torch.isnan(batch["sampling_per_token_logps"][batch["completion_mask"].bool()]).any()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert entry["search/searches_per_sample"] > 0
        assert entry["sampling/importance_sampling_ratio/min"] == pytest.approx(1.0, abs=1e-3)
        assert entry["grad_norm"] > 0


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_a_seed_in_generation_kwargs_still_gives_a_group_different_completions(monkeypatch, tiny_tokenizer, mode):
    """Rows with the same context go to vLLM as one prompt with n samples (as TRL sends a group): sent as separate
    n=1 requests, a `seed` in generation_kwargs gave every completion of a group the same sample."""
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    trajectories = [[f"<answer> {name} </answer>"] for name in ("Quarnel", "Ostavel", "Brantis", "Veldoria")]
    engine = ScriptedEngine(tiny_tokenizer, {"[g]": trajectories})
    if mode == "colocate":
        backend = FakeLLM(engine)
        generator = VLLMColocateGenerator(backend, {"temperature": 1.0, "logprobs": 0, "seed": 7}, [2])
    else:
        backend = FakeVLLMClient(engine)
        sampling = {"temperature": 1.0, "top_k": 0, "logprobs": 0, "seed": 7}
        generator = VLLMServerGenerator(backend, sampling, tiny_tokenizer, [2], SingleProcess())
    prompt = encode(tiny_tokenizer, "Question: [g]")
    other = encode(tiny_tokenizer, "Question: [g] again")
    turns = generator.generate([prompt] * 4 + [other], [40, 40, 40, 40, 40], STOPS)

    texts = [tiny_tokenizer.decode(turn.token_ids, skip_special_tokens=True) for turn in turns[:4]]
    assert len(set(texts)) == 4  # four different samples for the four rows of the group
    if mode == "colocate":
        (params,) = backend.calls
        assert [p.n for p in params] == [4, 1] and all(p.seed == 7 for p in params)
    else:  # one request per (limit, group size): the group's prompt once with n=4, the other with n=1
        assert sorted((body["n"], len(body["prompt"])) for body in backend.requests) == [(1, 1), (4, 1)]
