"""LoRA through TRL's `peft_config`: only the adapters train, and vLLM receives merged weights under the base names."""

import os

import pytest
import torch
from peft import LoraConfig, PeftModel

from trl_search import SearchGRPOTrainer
from trl_search.retrievers import BM25Retriever

from .fake_vllm import install_fake_vllm
from .scripted import script_model_forward
from .test_trainer import CORPUS, SCRIPTS, make_config, make_dataset


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def test_lora_trains_only_the_adapters_on_search_rollouts(tmp_path, tiny_model, tiny_tokenizer):
    script_model_forward(tiny_model, tiny_tokenizer, SCRIPTS)
    base = {name: param.detach().clone() for name, param in tiny_model.named_parameters()}
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        args=make_config(tmp_path, learning_rate=5e-2),
        train_dataset=make_dataset(),
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS, backend="numpy"),
        peft_config=lora_config(),
    )
    assert isinstance(trainer.model, PeftModel)
    trainer.train()

    trained = dict(trainer.model.named_parameters())
    lora = {name: param for name, param in trained.items() if "lora_" in name}
    assert lora and all(param.requires_grad for param in lora.values())
    assert any(not torch.all(param == 0) for name, param in lora.items() if "lora_B" in name)  # B starts at zero
    for name, param in trained.items():
        if "lora_" not in name:
            original = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(param, base[original]), f"{name} moved"
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 2 and all(entry["search/searches_per_sample"] > 0 for entry in steps)

    trainer.save_model()
    saved = set(os.listdir(trainer.args.output_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", "search_config.json"} <= saved


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_lora_with_vllm_syncs_merged_weights_under_base_names(monkeypatch, tmp_path, tiny_model, tiny_tokenizer, mode):
    fakes = install_fake_vllm(monkeypatch, tiny_tokenizer, SCRIPTS, mode)
    base_names = {name for name, _ in tiny_model.named_parameters()}
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        args=make_config(tmp_path, use_vllm=True, vllm_mode=mode, learning_rate=5e-2),
        train_dataset=make_dataset(),
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS, backend="numpy"),
        peft_config=lora_config(),
    )
    trainer.train()

    engine = fakes.llm if mode == "colocate" else fakes.client
    first, second = engine.loaded_weights
    assert set(first) == set(second) == base_names  # no adapter tensors, no PEFT prefixes
    # the second push carries the adapters merged into q_proj/v_proj, and leaves the other weights alone
    changed = {name for name in base_names if not torch.equal(first[name], second[name])}
    assert changed and all(".q_proj." in name or ".v_proj." in name for name in changed)
