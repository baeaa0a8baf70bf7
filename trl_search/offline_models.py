"""Tiny tokenizers and models built offline, for tests, the demo and GPU checks on machines without Hub access."""

from __future__ import annotations

import os
from collections.abc import Iterable

from .protocols import SEARCH_TAGS


# Hugging Face libraries without the Hub: no downloads, no telemetry, no tokenizer thread pools, no TRL notices.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRL_EXPERIMENTAL_SILENCE": "1",
}


def offline_environment() -> None:
    """Puts the Hugging Face libraries offline (`OFFLINE_ENVIRONMENT`), keeping any variable already set. Call it
    before importing them: the tests, the demo and the benchmarks do.

    Example:
        >>> offline_environment()
        >>> os.environ["HF_HUB_OFFLINE"]
        '1'
    """
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """Trains a byte-level BPE tokenizer on `texts` and wraps it as a `PreTrainedTokenizerFast`.

    The protocol tags are part of the training text so that they tokenise compactly, but they stay ordinary text
    (not special tokens): the model writes them like any other words, and decoding with `skip_special_tokens=True`
    keeps them.

    Example:
        >>> tokenizer = build_tokenizer(["<search> capital of france </search>"], vocab_size=300)
        >>> tokenizer.decode(tokenizer("<answer> Paris </answer>")["input_ids"])
        '<answer> Paris </answer>'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(texts) + [" ".join(SEARCH_TAGS)] * 8
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=CHAT_TOKENS,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    return wrapped


# TRL ships the chat templates of the models people train (`trl/chat_templates/*.jinja`); a tiny tokenizer carrying
# one of them, with that family's special tokens, stands in for the real tokenizer offline.
CHAT_FAMILIES = {
    "qwen2_5": {"eos": "<|im_end|>", "pad": "<|endoftext|>", "special": ["<|im_start|>"]},
    "qwen3": {"eos": "<|im_end|>", "pad": "<|endoftext|>", "special": ["<|im_start|>"]},
    "llama3_1": {
        "eos": "<|eot_id|>",
        "pad": "<|finetune_right_pad_id|>",
        "bos": "<|begin_of_text|>",
        "special": ["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>", "<|end_of_text|>"],
    },
}
# Qwen's tool-call and thinking markup: added tokens that are not special (they decode with skip_special_tokens=True).
QWEN_MARKUP = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]


def trl_chat_template(name: str) -> str:
    """The text of one of TRL's shipped chat templates, e.g. `"qwen2_5"`, `"qwen3"`, `"llama3_1"`.

    Example:
        >>> "tool_call" in trl_chat_template("qwen2_5")
        True
    """
    from importlib.resources import files

    return (files("trl") / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def build_chat_tokenizer(texts: Iterable[str], family: str = "qwen2_5", vocab_size: int = 2000):
    """A tiny byte-level BPE tokenizer carrying TRL's chat template of `family` and its special tokens, for offline
    tests and demos of the `tool_call` search protocol.

    Example:
        >>> tokenizer = build_chat_tokenizer(["What is the capital of Veldoria?"], "qwen2_5", vocab_size=300)
        >>> rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        >>> tokenizer.eos_token, rendered.startswith("<|im_start|>system")
        ('<|im_end|>', True)
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if family not in CHAT_FAMILIES:
        raise ValueError(f"Unknown chat family {family!r}; choose one of {sorted(CHAT_FAMILIES)}.")
    tokens = CHAT_FAMILIES[family]
    special = [tokens["eos"], tokens["pad"], *tokens.get("bos", "").split(), *tokens["special"]]
    template = trl_chat_template(family)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*texts, template] + [" ".join(SEARCH_TAGS)] * 4, trainer=trainer)
    if family.startswith("qwen"):
        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in QWEN_MARKUP])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=tokens["eos"],
        pad_token=tokens["pad"],
        bos_token=tokens.get("bos"),
        additional_special_tokens=tokens["special"],
        chat_template=template,
        clean_up_tokenization_spaces=False,
    )


def build_model(
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    **config_overrides,
):
    """Builds a randomly initialised `Qwen2ForCausalLM` sized for `tokenizer`.

    Example:
        >>> tokenizer = build_tokenizer(["hello world"], vocab_size=300)
        >>> build_model(tokenizer).config.num_hidden_layers
        2
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        **config_overrides,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
