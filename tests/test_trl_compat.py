"""One test per private TRL internal that trl-search touches (see trl_search/_trl_compat.py): a TRL upgrade that moves
one of them fails here, by name."""

import inspect
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer

from trl_search import _trl_compat
from trl_search.retrievers import BM25Retriever

from .fake_vllm import SamplingParams, install_fake_vllm
from .test_trainer import CORPUS, SCRIPTS, make_config, make_dataset


@pytest.fixture()
def trainer(tmp_path, tiny_model, tiny_tokenizer):
    from trl_search import SearchGRPOTrainer

    return SearchGRPOTrainer(
        model=tiny_model,
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS, backend="numpy"),
        args=make_config(tmp_path),
        train_dataset=make_dataset(),
    )


def test_overridden_methods_exist_with_the_signatures_we_call():
    assert list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters) == ["self", "inputs"]
    assert list(inspect.signature(GRPOTrainer._save).parameters)[:3] == ["self", "output_dir", "state_dict"]
    assert set(_trl_compat.OVERRIDDEN_METHODS) <= set(vars(GRPOTrainer)) | {
        name for cls in GRPOTrainer.__mro__ for name in vars(cls)
    }


def test_metrics_are_the_lists_trl_averages_into_its_logs(trainer):
    _trl_compat.metrics(trainer, "train")["search/probe"].extend([1.0, 3.0])
    trainer.log({"loss": 0.5})
    assert trainer.state.log_history[-1]["search/probe"] == 2.0


def test_processing_tokenizer_is_the_text_tokenizer(trainer, tiny_tokenizer):
    assert _trl_compat.processing_tokenizer(trainer) is tiny_tokenizer


def test_full_params_context_wraps_generation(trainer):
    with _trl_compat.full_params_context(trainer):
        pass
    assert hasattr(trainer, "_dist") and hasattr(trainer._dist, "summon_full_params")


def test_sampling_settings_follow_trl_and_refuse_what_the_rollout_owns():
    from trl.generation.vllm_generation import VLLMGeneration

    names = ("repetition_penalty", "temperature", "top_p", "top_k", "min_p", "logprobs", "generation_kwargs")
    source = inspect.getsource(VLLMGeneration.__init__)
    assert all(f"self.{name} =" in source for name in names)  # the attributes we read are TRL's own
    engine = SimpleNamespace(
        repetition_penalty=1.1, temperature=0.7, top_p=0.9, top_k=20, min_p=None, logprobs=0,
        generation_kwargs={"seed": 3},
    )  # fmt: skip
    assert _trl_compat.sampling_settings(engine) == {
        "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.0, "logprobs": 0, "seed": 3
    }  # fmt: skip
    engine.generation_kwargs = {"stop": ["\n"]}
    with pytest.raises(ValueError, match="stop"):
        _trl_compat.sampling_settings(engine)


def test_engine_sleep_and_wake_follow_trls_own_bookkeeping(monkeypatch, tmp_path, tiny_model, tiny_tokenizer):
    from trl.generation.vllm_generation import VLLMGeneration

    from trl_search import SearchGRPOTrainer

    # TRL's single-shot generate wakes and sleeps the engine with the same flag we set
    assert "_llm_weights_sleeping" in inspect.getsource(VLLMGeneration.generate)
    fakes = install_fake_vllm(monkeypatch, tiny_tokenizer, SCRIPTS, "colocate")
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS, backend="numpy"),
        args=make_config(tmp_path, use_vllm=True, vllm_mode="colocate"),
        train_dataset=make_dataset(),
    )
    engine = trainer.vllm_generation
    assert _trl_compat.wake_engine(engine) is False  # sleep mode off: nothing to do
    engine.enable_sleep_mode = True
    fakes.llm.sleeping = True
    assert _trl_compat.wake_engine(engine) is True and not fakes.llm.sleeping
    _trl_compat.put_engine_to_sleep(engine)
    assert fakes.llm.sleeping and engine._llm_weights_sleeping is True


def test_extract_logprobs_reads_vllm_outputs(monkeypatch, tiny_tokenizer):
    from .fake_vllm import FakeLLM, ScriptedEngine

    llm = FakeLLM(ScriptedEngine(tiny_tokenizer, {"[s0]": [["<answer> Quarnel </answer>"]]}))
    prompt = tiny_tokenizer("Question [s0]", add_special_tokens=False)["input_ids"]
    outputs = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(n=2, max_tokens=20, logprobs=0))
    logprobs, token_ids = _trl_compat.extract_logprobs(outputs)
    completions = [completion for request in outputs for completion in request.outputs]
    assert len(logprobs) == len(token_ids) == 2
    for completion, steps, ids in zip(completions, logprobs, token_ids):
        assert [step_ids[0] for step_ids in ids] == list(completion.token_ids)
        assert torch.tensor([step[0] for step in steps]).lt(0).all()
