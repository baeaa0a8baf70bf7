"""The search settings saved with a trained model (`search_config.json`) and the model card's search section.

A model trained with search only works with the same protocol, prompt and rollout limits; they travel with the
weights so that inference and `trl-search eval` can read them back with `load_search_settings`.
"""

from __future__ import annotations

import json
import os


SEARCH_SETTINGS_NAME = "search_config.json"
# 2: `top_k` became `retrieval_top_k`, and `observation_format` was added (version 1 files rendered "legacy").
SETTINGS_VERSION = 2


def search_settings(args, retriever=None, prompt_format: str | None = None) -> dict:
    """The search settings of a training run, as saved next to the model.

    Args:
        args: a `SearchGRPOConfig`.
        retriever: the training retriever (its `describe()` is saved), if any.
        prompt_format: `"text"` or `"conversational"` (prompts went through the chat template).

    Example:
        >>> from trl_search import SearchGRPOConfig
        >>> settings = search_settings(SearchGRPOConfig(output_dir="out", bf16=False, report_to="none"))
        >>> settings["protocol"], settings["max_turns"], settings["retrieval_top_k"]
        ('tags', 4, 3)
    """
    from . import __version__
    from .protocols import PROTOCOLS

    settings = args.rollout_settings.to_dict()
    return {
        "settings_version": SETTINGS_VERSION,
        "trl_search_version": __version__,
        **settings,
        "stop_strings": list(PROTOCOLS[args.search_protocol].stop_strings),
        "prompt_template": args.prompt_template,
        "prompt_format": prompt_format,
        "chat_template_kwargs": dict(args.chat_template_kwargs or {}),
        "retriever": retriever.describe() if retriever is not None else None,
    }


def save_search_settings(directory: str | os.PathLike, settings: dict) -> str:
    """Writes `settings` to `<directory>/search_config.json` and returns the path.

    Example:
        >>> save_search_settings("outputs/model", search_settings(config, retriever))  # doctest: +SKIP
        'outputs/model/search_config.json'
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, SEARCH_SETTINGS_NAME)
    staging = f"{path}.tmp-{os.getpid()}"
    with open(staging, "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(staging, path)  # a crash mid-write never leaves a truncated settings file next to the model
    return path


def load_search_settings(model: str | os.PathLike, revision: str | None = None) -> dict | None:
    """Reads the search settings saved with a model: a local directory, or a Hub repository id.

    Returns None when the model has none (it was not trained with trl-search).

    Example:
        >>> settings = load_search_settings("outputs/qwen2.5-3b-search")  # doctest: +SKIP
        >>> settings["prompt_template"], settings["max_turns"], settings["retrieval_top_k"]  # doctest: +SKIP
        ('Answer the question ...', 4, 3)
    """
    model = os.fspath(model)
    if os.path.isdir(model):
        path = os.path.join(model, SEARCH_SETTINGS_NAME)
        if not os.path.isfile(path):
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = hf_hub_download(model, SEARCH_SETTINGS_NAME, revision=revision)
        except EntryNotFoundError:
            return None
    with open(path, encoding="utf-8") as handle:
        settings = json.load(handle)
    if settings.get("settings_version", 1) > SETTINGS_VERSION:
        raise ValueError(
            f"{path} was written by a newer trl-search (settings_version {settings['settings_version']}); upgrade it."
        )
    return upgrade_search_settings(settings)


def upgrade_search_settings(settings: dict) -> dict:
    """Brings settings saved by an older trl-search to the current names, so that a checkpoint is evaluated exactly
    as it was trained.

    Example:
        >>> upgrade_search_settings({"settings_version": 1, "top_k": 2})["retrieval_top_k"]
        2
        >>> upgrade_search_settings({"settings_version": 1, "top_k": 2})["observation_format"]
        'legacy'
    """
    settings = dict(settings)
    if settings.get("settings_version", 1) < 2:
        if "top_k" in settings:
            settings["retrieval_top_k"] = settings.pop("top_k")
        settings.setdefault("observation_format", "legacy")  # rendered before observations matched Search-R1's
        settings["settings_version"] = SETTINGS_VERSION
    return settings


def model_card_section(settings: dict, model_id: str) -> str:
    """The model card's section on how the model was trained with search and how to run it with a retriever.

    Example:
        >>> print(model_card_section(search_settings(config, retriever), "user/model"))  # doctest: +SKIP
    """
    retriever = settings.get("retriever") or {}
    retriever_text = ", ".join(f"{key}={value}" for key, value in retriever.items() if not isinstance(value, dict))
    tool_call = settings.get("protocol") == "tool_call"
    protocol = (
        "a `search(query)` tool called through the chat template, passages returned as tool messages"
        if tool_call
        else "`<search> query </search>`, `<information> ... </information>`, `<answer> ... </answer>`"
    )
    how = (
        "It calls a `search(query)` tool through its chat template, reads the passages returned as tool messages "
        "(masked out of the loss during training), and answers in its final message."
        if tool_call
        else "It writes its reasoning in\n`<think>`, asks a search engine with `<search> query </search>`, reads the "
        "passages returned in\n`<information> ... </information>` (masked out of the loss during training), and "
        "answers in `<answer> ... </answer>`."
    )
    continue_with = (
        "generate an assistant turn; run its `search` calls and append the passages as tool messages rendered by the "
        "chat template, then continue"
        if tool_call
        else f"generate turn by turn, stopping at {settings['stop_strings']}; after `</search>`, append the "
        f"top-{settings['retrieval_top_k']}\n# passages as `<information>Doc 1(Title: ...) ...</information>` and continue"
    )
    rows = [
        ("Protocol", f"`{settings['protocol']}`: {protocol}"),
        ("Searches per question (max)", settings["max_turns"]),
        ("Passages per search", settings["retrieval_top_k"]),
        ("Observation length (tokens, max)", settings["max_obs_length"]),
        ("Tokens per turn (max)", settings["max_tokens_per_turn"]),
        ("Completion length (tokens, max)", settings["max_completion_length"]),
        ("Retrieved tokens masked from the loss", settings["mask_retrieved_tokens"]),
        ("Prompt format", settings.get("prompt_format") or "unknown"),
        ("Training retriever", retriever_text or "unknown"),
    ]  # fmt: skip
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"""
## Search

This model was trained with trl-search (`SearchGRPOTrainer`, GRPO with a multi-turn search
rollout, the Search-R1 method, [arXiv:2503.09516](https://arxiv.org/abs/2503.09516)). {how}

| Setting | Value |
|---|---|
{table}

The settings, with the exact prompt template, are in `{SEARCH_SETTINGS_NAME}`. Run the model with a retriever:

```bash
pip install trl-search
trl-search index --corpus corpus.jsonl --out index          # a BM25 index over your passages
trl-search serve --retriever index --port 8000               # or pass the index directory directly below
trl-search eval --model {model_id} --retriever http://127.0.0.1:8000/retrieve --datasets nq  # settings from {SEARCH_SETTINGS_NAME}
```

```python
from trl_search.hub import load_search_settings
from trl_search.data import make_search_prompt

settings = load_search_settings("{model_id}")
prompt = make_search_prompt("Who founded Brantis?", template=settings["prompt_template"],
                            conversational=settings["prompt_format"] == "conversational")
# {continue_with} (trl_search.rollout.SearchRollout does it).
```
"""
