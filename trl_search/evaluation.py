"""Evaluation with search: greedy rollouts on QA sets, through the same `SearchRollout` as training.

`evaluate(...)` scores a model on one or more datasets and writes three files to `output_dir`:
- `results.json`: per-dataset and average metrics, plus everything needed to reproduce them (prompt template, rollout
  and generation settings, `retriever.describe()`, package version);
- `results.md`: the paper's table layout (datasets as columns, then the average), and a table of all metrics;
- `trajectories.jsonl`: one line per question with the completion, the extracted answer and its scores.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .data import (
    DEFAULT_PROMPT_TEMPLATE,
    DIRECT_PROMPT_TEMPLATE,
    PAPER_DATASETS,
    QA_DATASETS,
    RAG_PROMPT_TEMPLATE,
    TOOL_CALL_PROMPT_TEMPLATE,
    load_qa_dataset,
    make_search_prompt,
    tokenize_prompts,
)
from .protocols import validate_sequence
from .retrievers.base import load_retriever
from .rewards import contains_answer, cover_exact_match_reward, exact_match_reward, f1_reward
from .rollout import RolloutSettings, SearchRollout, rollout_metrics


logger = logging.getLogger(__name__)

BASELINES = (None, "direct", "rag")
# name in results.json -> row label in results.md, in display order. The rollout statistics are named as the trainer's
# `search/*` metrics (`rollout_metrics`); in evaluation a sample is one question's trajectory.
METRICS = {
    "em": "EM",
    "f1": "F1",
    "cover_em": "Cover EM",
    "searches_per_sample": "Searches / question",
    "turns_per_sample": "Turns / question",
    "invalid_action_rate": "Invalid-action rate",
    "answer_retrieved_ratio": "Gold answer retrieved",
    "answered_ratio": "Answered",
    "masked_token_ratio": "Masked-token ratio",
    "format_valid": "Well-formed",
    "completion_tokens": "Completion tokens",
}


def _saved_search_settings(model_name: str) -> dict | None:
    """The `search_config.json` saved with a trl-search model, if any (a Hub id that cannot be reached: none)."""
    from .hub import load_search_settings

    if os.path.isdir(model_name):
        return load_search_settings(model_name)
    try:
        return load_search_settings(model_name)
    except Exception as error:  # offline or private: evaluation then runs on explicit settings and the defaults
        logger.warning("Could not read search settings of %s from the Hub (%s); using defaults.", model_name, error)
        return None


def _load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _load_model(model, tokenizer, dtype: str = "auto", device: str | None = None):
    if isinstance(model, (str, os.PathLike)):
        import torch
        from transformers import AutoModelForCausalLM

        tokenizer = tokenizer or _load_tokenizer(model)
        model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    elif tokenizer is None:
        raise ValueError("Pass `tokenizer` along with a model object (or pass a model path to load both).")
    if model is not None:
        model.eval()
    return model, tokenizer


def _eos_token_ids(model_path: str, tokenizer) -> list[int]:
    """The ids that end a reply: the model's generation config (Qwen instruct: `<|im_end|>` and `<|endoftext|>`)."""
    from transformers import GenerationConfig

    try:
        configured = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    if configured is None:
        configured = tokenizer.eos_token_id
    return list(configured) if isinstance(configured, (list, tuple)) else [configured]


def _vllm_generator(model_path: str, tokenizer, vllm_kwargs: dict | None):
    """Greedy per-turn generation on a vLLM engine in this process (the training rollout's colocate backend)."""
    try:
        from vllm import LLM
    except ImportError as error:
        raise ImportError("backend='vllm' needs vLLM: pip install 'trl-search[vllm]'.") from error
    from .vllm_generation import VLLMColocateGenerator

    llm = LLM(model=model_path, **(vllm_kwargs or {}))
    return VLLMColocateGenerator(llm, {"temperature": 0.0}, _eos_token_ids(model_path, tokenizer))


def _greedy_config(model, tokenizer):
    from transformers import GenerationConfig

    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return GenerationConfig(
        do_sample=False,
        eos_token_id=configured if configured is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def _mean(values) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def _statistic_sums(trajectories: Sequence[dict]) -> dict[str, float]:
    """`RolloutOutput.statistic_sums()` recomputed from trajectory records, one sample per question (so that a
    `trajectories.jsonl` alone gives the summary back)."""
    # None: nothing could be retrieved (the direct baseline), so the question does not count in the ratio.
    retrieved = [record["answer_retrieved"] for record in trajectories if record["answer_retrieved"] is not None]
    completion_tokens = sum(record["completion_tokens"] for record in trajectories)
    return {
        "samples": float(len(trajectories)),
        "searches": float(sum(record["num_searches"] for record in trajectories)),
        "invalid_actions": float(sum(record["num_invalid"] for record in trajectories)),
        "turns": float(sum(record["num_turns"] for record in trajectories)),
        "answered": float(sum(bool(record["answered"]) for record in trajectories)),
        "injected_tokens": float(completion_tokens - sum(record["policy_tokens"] for record in trajectories)),
        "completion_tokens": float(completion_tokens),
        "answer_in_retrieval": float(sum(bool(found) for found in retrieved)),
        "with_golden_answers": float(len(retrieved)),
    }


def summarize(trajectories: Sequence[dict]) -> dict:
    """Aggregates one dataset's trajectory records (as written to `trajectories.jsonl`) into its metrics.

    The rollout statistics come from `trl_search.rollout.rollout_metrics`, under the names the trainer logs as
    `search/<name>`, a sample being one question's trajectory: `searches_per_sample`, `turns_per_sample`,
    `invalid_action_rate` (invalid actions over turns), `answered_ratio`, `masked_token_ratio` and
    `answer_retrieved_ratio` (share of questions whose gold answer appeared in a retrieved passage; None when nothing
    could be retrieved: the direct baseline). The evaluation's own: `num_questions`, `em`, `f1`, `cover_em`,
    `format_valid` (share of well-formed completions) and `completion_tokens` (mean per question).

    Example:
        >>> summary = summarize([{"em": 1.0, "f1": 1.0, "cover_em": 1.0, "num_searches": 1, "num_invalid": 0,
        ...                       "num_turns": 2, "answer_retrieved": True, "answered": True, "format_valid": True,
        ...                       "completion_tokens": 40, "policy_tokens": 30}])
        >>> summary["em"], summary["searches_per_sample"], summary["masked_token_ratio"]
        (1.0, 1.0, 0.25)
    """
    summary = {
        "num_questions": len(trajectories),
        "em": _mean(record["em"] for record in trajectories),
        "f1": _mean(record["f1"] for record in trajectories),
        "cover_em": _mean(record["cover_em"] for record in trajectories),
        **rollout_metrics(_statistic_sums(trajectories)),
    }
    summary.setdefault("answer_retrieved_ratio", None)  # every dataset's summary has the same keys
    summary["format_valid"] = _mean(
        None if record["format_valid"] is None else float(record["format_valid"]) for record in trajectories
    )
    summary["completion_tokens"] = _mean(record["completion_tokens"] for record in trajectories)
    return summary


def _format_value(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def results_markdown(results: dict) -> str:
    """Renders `results.json`'s content as markdown: the paper's EM table, then every metric per dataset.

    Example:
        >>> print(results_markdown({"label": "search", "datasets": {"nq": {"em": 0.5}}, "average": {"em": 0.5}}))
        ... # doctest: +NORMALIZE_WHITESPACE
        | Method | NQ | Avg. |
        |---|---|---|
        | search | 0.500 | 0.500 |
        <BLANKLINE>
        | Metric | NQ | Avg. |
        |---|---|---|
        | EM | 0.500 | 0.500 |
    """
    names = list(results["datasets"])
    labels = [QA_DATASETS[name].label if name in QA_DATASETS else name for name in names]
    columns = " | ".join(labels) + " | Avg. |\n" + "|---" * (len(names) + 2) + "|\n"
    em = [results["datasets"][name].get("em") for name in names] + [results["average"].get("em")]
    lines = [f"| Method | {columns}| {results['label']} | " + " | ".join(map(_format_value, em)) + " |", ""]
    detail = f"| Metric | {columns}"
    for key, label in METRICS.items():
        if not any(key in results["datasets"][name] for name in names):
            continue
        values = [results["datasets"][name].get(key) for name in names] + [results["average"].get(key)]
        detail += f"| {label} | " + " | ".join(map(_format_value, values)) + " |\n"
    lines.append(detail.rstrip("\n"))
    return "\n".join(lines) + "\n"


def _score(sample, text: str, golds: list[str], rag_retrieved: bool | None, baseline, tags: bool = True) -> dict:
    if baseline == "rag":
        retrieved = rag_retrieved
    elif baseline == "direct":
        retrieved = None
    else:  # searching mode: a question never searched has not retrieved its answer
        retrieved = bool(sample.answer_in_retrieval)
    format_error = validate_sequence(text) if tags else None  # the tag grammar; tool calls are parsed by TRL
    answer = [sample.predicted_answer]  # exactly what the rollout executed, as in training
    return {
        "answer": sample.predicted_answer,
        "em": exact_match_reward([text], [golds], predicted_answer=answer)[0],
        "f1": f1_reward([text], [golds], predicted_answer=answer)[0],
        "cover_em": cover_exact_match_reward([text], [golds], predicted_answer=answer)[0],
        "format_valid": format_error is None if tags else None,
        "format_error": format_error,
        "num_searches": sample.num_searches,
        "queries": list(sample.queries),
        "num_invalid": sample.num_invalid,
        "num_turns": getattr(sample, "num_turns", sample.num_searches + sample.num_invalid + 1),
        "answered": bool(sample.answered),
        "answer_retrieved": retrieved,
        "stop_reason": sample.stop_reason,
        "completion_tokens": len(sample.completion_ids),
        "policy_tokens": int(sum(sample.env_mask)),
    }


def evaluate(
    model,
    retriever=None,
    datasets: str | Sequence[str] = PAPER_DATASETS,
    *,
    tokenizer=None,
    baseline: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    output_dir: str | None = None,
    batch_size: int = 32,
    max_turns: int | None = None,
    retrieval_top_k: int | None = None,
    max_obs_length: int | None = None,
    max_tokens_per_turn: int | None = None,
    max_completion_length: int | None = None,
    protocol: str | None = None,
    prompt_template: str | None = None,
    conversational: bool | None = None,
    chat_template_kwargs: dict | None = None,
    label: str | None = None,
    generator=None,
    backend: str = "transformers",
    vllm_kwargs: dict | None = None,
    dtype: str = "auto",
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluates a model with search (or a baseline) on QA sets, greedily, and returns (and writes) the results.

    Args:
        model: a model directory or Hub id, or a loaded `PreTrainedModel` (then pass `tokenizer`).
        retriever: a `Retriever`, or a spec for `load_retriever` (index directory, URL, JSONL corpus, `"sample"`).
            Not needed for `baseline="direct"`.
        datasets: registry names (see `trl_search.data.QA_DATASETS`), as a list or a comma-separated string.
        baseline: None (search, up to `max_turns` searches), `"direct"` (answer without retrieval) or `"rag"`
            (retrieve `retrieval_top_k` passages for the question once, put them in the prompt, answer).
        data_dir: local copy of the datasets (`<data_dir>/<name>/<split>.jsonl`); default: the Hub.
        split, limit: which split (default test, else dev) and how many questions per dataset.
        output_dir: where to write `results.json`, `results.md` and `trajectories.jsonl` (nothing written if None).
        max_turns, retrieval_top_k, max_obs_length, max_tokens_per_turn, max_completion_length, protocol: the rollout
            (`RolloutSettings`; `protocol` is `"tags"` or `"tool_call"`). Left as None,
            they come from the `search_config.json` saved with a trl-search model (so a checkpoint is evaluated as
            it was trained), else the paper's values (`RolloutSettings`' defaults). The saved prompt template, format and
            chat-template arguments are used the same way.
        prompt_template: overrides the template of the mode (`DEFAULT_PROMPT_TEMPLATE`, `DIRECT_PROMPT_TEMPLATE`,
            `RAG_PROMPT_TEMPLATE`).
        conversational: wrap prompts as a user message for the chat template; default: when the tokenizer has one.
        chat_template_kwargs: extra arguments for `apply_chat_template` (e.g. `{"enable_thinking": False}`).
        generator: a ready `TurnGenerator` (then `model` may be None and `backend` is ignored).
        backend: `"transformers"` (`TransformersGenerator`) or `"vllm"` (a vLLM engine in this process, built from
            the model path with `vllm_kwargs` such as `{"gpu_memory_utilization": 0.9, "tensor_parallel_size": 1}`).

    Example:
        >>> results = evaluate("Qwen/Qwen2.5-3B", "http://127.0.0.1:8000/retrieve", "nq,hotpotqa", limit=100,
        ...                    output_dir="eval/qwen3b")  # doctest: +SKIP
        >>> sorted(results["datasets"]), sorted(results["average"])[:3]  # doctest: +SKIP
        (['hotpotqa', 'nq'], ['answer_retrieved_ratio', 'answered_ratio', 'completion_tokens'])
    """
    names = _check_arguments(datasets, baseline, limit, backend)
    model_name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    retriever = _resolve_retriever(retriever, baseline)
    # What is not given explicitly comes from the settings saved with the model, else the paper's values.
    saved = _saved_search_settings(model_name) if model_name is not None else None
    explicit = {"max_turns": max_turns, "retrieval_top_k": retrieval_top_k, "max_obs_length": max_obs_length}
    explicit.update(max_tokens_per_turn=max_tokens_per_turn, max_completion_length=max_completion_length)
    explicit.update(protocol=protocol)
    settings = _rollout_settings(saved, baseline, explicit)
    prompt_template, conversational, chat_template_kwargs = _prompt_settings(
        saved, settings, baseline, prompt_template, conversational, chat_template_kwargs
    )
    loaded = {name: load_qa_dataset(name, split, data_dir, limit=limit) for name in names}  # before the slow load
    model, tokenizer, generator = _resolve_generator(
        model, model_name, tokenizer, generator, backend, vllm_kwargs, dtype, device
    )
    if conversational is None:  # as Search-R1: the chat template whenever the tokenizer has one (Qwen base too)
        conversational = getattr(tokenizer, "chat_template", None) is not None or settings.protocol == "tool_call"
    rollout = SearchRollout(retriever, tokenizer, settings, chat_template_kwargs=chat_template_kwargs)
    run = _EvaluationRun(
        rollout, generator, tokenizer, retriever, baseline, prompt_template, conversational, chat_template_kwargs
    )
    model_description = model_name or getattr(getattr(model, "config", None), "_name_or_path", None)
    run_info = _run_info(run, label, model_description, batch_size, vllm_kwargs if backend == "vllm" else None)
    return _evaluate_datasets(run, loaded, run_info, batch_size, output_dir, progress)


@dataclass(frozen=True)
class _EvaluationRun:
    """What every batch of an evaluation needs, resolved once by `evaluate`."""

    rollout: SearchRollout
    generator: Any
    tokenizer: Any
    retriever: Any
    baseline: str | None
    template: str
    conversational: bool
    chat_template_kwargs: dict | None


def _check_arguments(datasets: str | Sequence[str], baseline, limit, backend) -> list[str]:
    """Rejects bad arguments before anything is loaded; returns the dataset names."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions per dataset, got {limit}.")
    if backend not in ("transformers", "vllm"):
        raise ValueError(f"backend must be 'transformers' or 'vllm', got {backend!r}.")
    names = [name.strip() for name in datasets.split(",")] if isinstance(datasets, str) else list(datasets)
    if not names or not all(names):
        raise ValueError("Give at least one dataset, e.g. datasets='nq,hotpotqa' (or 'sample' offline).")
    return names


def _resolve_retriever(retriever, baseline):
    """The `Retriever` to search with; None for the direct baseline, which never retrieves."""
    retriever = load_retriever(retriever) if baseline != "direct" and retriever is not None else None
    if baseline != "direct" and retriever is None:
        raise ValueError("A retriever is needed to search; pass one, or use baseline='direct'.")
    return retriever


def _rollout_settings(saved: dict | None, baseline, explicit: dict) -> RolloutSettings:
    """The one place rollout settings are decided: the paper's defaults, then the model's own, then the caller's
    (`explicit`, None values meaning not given)."""
    explicit = {**explicit, "mask_retrieved_tokens": True}
    if baseline is not None:
        explicit.update(max_turns=0, protocol="tags")  # the baselines answer in one turn, from the prompt
    return RolloutSettings.merged(saved, explicit)


def _prompt_settings(saved: dict | None, settings, baseline, template, conversational, chat_template_kwargs):
    """The prompt template, chat format and chat-template arguments: the caller's, else those saved with the model,
    else the mode's defaults. `conversational` may stay None: it then depends on the tokenizer, not loaded yet."""
    if saved is not None:
        if conversational is None and saved.get("prompt_format"):
            conversational = saved["prompt_format"] == "conversational"
        if chat_template_kwargs is None:
            chat_template_kwargs = saved.get("chat_template_kwargs") or None
        if template is None and baseline is None:
            template = saved.get("prompt_template")
    if template is None and settings.protocol == "tool_call":
        template = TOOL_CALL_PROMPT_TEMPLATE
    if template is None:
        template = {None: DEFAULT_PROMPT_TEMPLATE, "direct": DIRECT_PROMPT_TEMPLATE, "rag": RAG_PROMPT_TEMPLATE}[
            baseline
        ]
    make_search_prompt("?", template, passages="" if baseline == "rag" else None)  # a bad template fails now
    return template, conversational, chat_template_kwargs


def _resolve_generator(model, model_name, tokenizer, generator, backend, vllm_kwargs, dtype, device):
    """Loads what generation needs; returns (model, tokenizer, generator), the model None on a vLLM engine."""
    from .generation import TransformersGenerator

    if generator is None and backend == "vllm":
        if model_name is None:
            raise ValueError("backend='vllm' loads the model itself: pass its path or Hub id as `model`.")
        tokenizer = tokenizer or _load_tokenizer(model_name)
        generator = _vllm_generator(model_name, tokenizer, vllm_kwargs)
        model = None
    model, tokenizer = _load_model(model, tokenizer, dtype, device)
    if generator is None:
        generator = TransformersGenerator(model, tokenizer, _greedy_config(model, tokenizer))
    return model, tokenizer, generator


def _run_info(run: _EvaluationRun, label, model_description, batch_size: int, vllm_kwargs) -> dict:
    """The part of `results.json` that says how the results were obtained, so that they can be reproduced."""
    from . import __version__

    return {
        "label": label or (run.baseline or "search"),
        "model": model_description,
        "baseline": run.baseline,
        "prompt_template": run.template,
        "conversational": run.conversational,
        "chat_template_kwargs": run.chat_template_kwargs,
        "rollout": run.rollout.settings.to_dict(),
        "generation": {
            "do_sample": False,
            "batch_size": batch_size,
            "generator": type(run.generator).__name__,
            "vllm_kwargs": vllm_kwargs,
        },
        "retriever": run.retriever.describe() if run.retriever is not None else None,
        "trl_search_version": __version__,
    }


def _evaluate_datasets(
    run: _EvaluationRun, loaded: dict, run_info: dict, batch_size: int, output_dir: str | None, progress: bool
) -> dict:
    """Evaluates every dataset in batches, streaming `trajectories.jsonl`; returns the final results."""
    from tqdm.auto import tqdm

    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
    trajectories_path = os.path.join(output_dir, "trajectories.jsonl") if output_dir is not None else os.devnull
    per_dataset, retriever_seconds, start = {}, 0.0, time.perf_counter()
    total_em, done = 0.0, 0
    bar = tqdm(total=sum(len(dataset) for dataset in loaded.values()), unit="q", desc="eval", disable=not progress)
    with bar, open(trajectories_path, "w", encoding="utf-8") as trajectories_file:
        for name, dataset in loaded.items():
            records = []
            for first in range(0, len(dataset), batch_size):
                batch_records, seconds = _evaluate_batch(run, dataset[first : first + batch_size], name)
                retriever_seconds += seconds
                records.extend(batch_records)
                trajectories_file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in batch_records)
                trajectories_file.flush()
                total_em, done = total_em + sum(record["em"] for record in batch_records), done + len(batch_records)
                bar.update(len(batch_records))
                bar.set_postfix(dataset=name, em=f"{total_em / done:.3f}")
            per_dataset[name] = {**summarize(records), "split": None if dataset.split is None else str(dataset.split)}
            # Written after every dataset, so that a long run that stops early keeps the finished columns.
            results = {
                **run_info,
                "complete": len(per_dataset) == len(loaded),
                "datasets": per_dataset,
                "average": {key: _mean(metrics[key] for metrics in per_dataset.values()) for key in METRICS},
                "retriever_seconds": retriever_seconds,
                "elapsed_seconds": time.perf_counter() - start,
            }
            if output_dir is not None:
                _write_results(results, output_dir)
    return results


def _evaluate_batch(run: _EvaluationRun, batch, name: str) -> tuple[list[dict], float]:
    """Rolls out one batch of questions and scores it; returns the trajectory records and the retrieval time."""
    questions, golds = batch["question"], batch["golden_answers"]
    protocol = run.rollout.protocol  # tool calls: the search tool, and the template its tool turns render with
    passages, rag_retrieved = [None] * len(questions), [None] * len(questions)
    if run.baseline == "rag":  # one retrieval for the question itself, shown in the prompt
        hits = run.retriever.search(list(questions), k=run.rollout.retrieval_top_k)
        passages = [protocol.render_passages(found) for found in hits]
        rag_retrieved = [contains_answer(text, gold) for text, gold in zip(passages, golds)]
    prompts = [
        make_search_prompt(question, run.template, run.conversational, passages=text)
        for question, text in zip(questions, passages)
    ]
    prompt_ids = tokenize_prompts(
        prompts, run.tokenizer, run.chat_template_kwargs, protocol.chat_template, tools=protocol.tools
    )
    output = run.rollout.run(prompt_ids, run.generator, golden_answers=golds)
    records = []
    for index, sample in enumerate(output.samples):
        text = run.tokenizer.decode(sample.completion_ids, skip_special_tokens=True)
        record = {
            "id": batch["id"][index],
            "data_source": name,
            "question": questions[index],
            "golden_answers": golds[index],
            "completion": text,
            **_score(sample, text, golds[index], rag_retrieved[index], run.baseline, protocol.name == "tags"),
        }
        if run.baseline == "rag":
            record["prompt_passages"] = passages[index]
        records.append(record)
    return records, output.retriever_seconds


def _write_results(results: dict, output_dir: str) -> None:
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, ensure_ascii=False)
    with open(os.path.join(output_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(results_markdown(results))
