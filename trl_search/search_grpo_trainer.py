"""`SearchGRPOTrainer`: TRL's GRPO with Search-R1's multi-turn search rollout plugged into its `rollout_func` hook."""

from __future__ import annotations

import os
import warnings

import torch
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from ._trl_compat import full_params_context, processing_tokenizer
from ._trl_compat import metrics as trainer_metrics
from .data import tokenize_prompts
from .gathered_retrieval import GatheredRetriever
from .generation import TransformersGenerator
from .hub import model_card_section, save_search_settings, search_settings
from .retrievers.base import Retriever, load_retriever
from .rewards import exact_match_reward
from .rollout import RolloutOutput, SearchRollout, rollout_metrics
from .search_grpo_config import SearchGRPOConfig
from .vllm_generation import make_vllm_generator


class SearchGRPOTrainer(GRPOTrainer):
    """GRPO trainer whose completions are multi-turn trajectories that call a search engine.

    The policy writes `<search> query </search>`; generation stops there, all queries of the batch go to `retriever`
    in one call per turn, and the passages come back inside `<information> ... </information>`. Retrieved tokens
    stay in the context but are masked out of the loss, the KL and the policy metrics (`env_mask` -> TRL's
    `tool_mask`). The default reward is exact match of the last `<answer>` against the `golden_answers` column.

    Args:
        model: a model id, a local directory or a `PreTrainedModel`, as for `GRPOTrainer`.
        reward_funcs: reward function(s); defaults to `trl_search.rewards.exact_match_reward`.
        args: a `SearchGRPOConfig`.
        train_dataset: a dataset with a `prompt` column (text or chat messages) and a `golden_answers` column.
        retriever: a `Retriever`, or a spec for `load_retriever` (an index directory or a `/retrieve` URL). With
            `gather_retrieval_queries=True`, ranks other than the main one may pass None.
        **kwargs: anything else `GRPOTrainer` accepts (callbacks, peft_config, ...), except `rollout_func`, `tools`
            and `environment_factory`, which the search rollout replaces.

    Generation: transformers `generate` by default; with `use_vllm=True`, TRL's vLLM engine in either mode
    (`vllm_mode="colocate"` or `"server"`), one call per turn with the protocol's stop strings, and the sampling logprobs
    go to TRL's importance-sampling correction. Saved models carry `search_config.json` (see `trl_search.hub`).

    Reward functions receive, besides the dataset columns, `num_searches`, `search_queries`, `retrieved_texts` and
    `answer_in_retrieval` (whether a gold answer appeared in the retrieved text; None without `golden_answers`).

    Example:
        >>> from trl_search import SearchGRPOConfig, SearchGRPOTrainer
        >>> from trl_search.retrievers import BM25Retriever
        >>> trainer = SearchGRPOTrainer(  # doctest: +SKIP
        ...     model="Qwen/Qwen2.5-3B",
        ...     retriever=BM25Retriever.build("corpus.jsonl"),
        ...     args=SearchGRPOConfig(output_dir="out", max_turns=4, retrieval_top_k=3),
        ...     train_dataset=dataset,
        ... )
        >>> trainer.train()  # doctest: +SKIP
    """

    _tag_names = ["trl", "grpo", "trl-search", "search-r1"]
    _name = "SearchGRPO"

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: SearchGRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        retriever: Retriever | str | os.PathLike | None = None,
        **kwargs,
    ):
        # With gathered retrieval only the main process queries: the other ranks may pass None (no index in memory).
        gathered = args is not None and getattr(args, "gather_retrieval_queries", False)
        if retriever is None and not (gathered and args.process_index != 0):
            raise ValueError(
                "SearchGRPOTrainer needs a retriever: pass retriever=BM25Retriever.build('corpus.jsonl'), "
                "load_retriever('path/to/index'), or a Search-R1 server URL such as 'http://127.0.0.1:8000/retrieve'."
            )
        if isinstance(retriever, (str, os.PathLike)):
            retriever = load_retriever(retriever)
        if retriever is not None and not hasattr(retriever, "search"):
            raise TypeError(f"retriever must be a trl_search Retriever, got {type(retriever).__name__}.")
        for name in ("rollout_func", "tools", "environment_factory"):
            if kwargs.get(name):
                raise ValueError(
                    f"SearchGRPOTrainer runs its own search rollout; `{name}` cannot be combined with it."
                )
            kwargs.pop(name, None)
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = SearchGRPOConfig(f"{str(model_name).rstrip('/').split('/')[-1]}-SearchGRPO")
        elif not isinstance(args, SearchGRPOConfig):
            raise TypeError(
                f"args must be a SearchGRPOConfig (it carries the search settings), got {type(args).__name__}. "
                "Build one with SearchGRPOConfig(**your_grpo_config.to_dict())."
            )
        if reward_funcs is None:
            reward_funcs = exact_match_reward
        _refuse_unsupported_settings(args)
        _check_dataset(train_dataset, reward_funcs, "train_dataset")
        if isinstance(eval_dataset, dict):
            for name, dataset in eval_dataset.items():
                _check_dataset(dataset, reward_funcs, f"eval_dataset[{name!r}]")
        else:
            _check_dataset(eval_dataset, reward_funcs, "eval_dataset")
        self.retriever = retriever
        self._rollout_inputs = None

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
            super().__init__(
                model,
                reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                rollout_func=self._search_rollout_func,
                **kwargs,
            )

        if args.gather_retrieval_queries and self.accelerator.num_processes > 1:
            retriever = GatheredRetriever(retriever, self.accelerator)
        self.search_rollout = SearchRollout(
            retriever,
            processing_tokenizer(self),
            args.rollout_settings,
            eos_token_id=self.eos_token_ids[0],
            chat_template=self.chat_template,
            chat_template_kwargs=self.chat_template_kwargs,
        )
        self._generator = None
        self._vllm_generator = None

    # Keep the batch's rows at hand: the rollout hook receives only prompts, and the retrieval metrics need the gold
    # answers of the same rows.
    def _generate_and_score_completions(self, inputs):
        self._rollout_inputs = inputs
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_inputs = None

    def _search_rollout_func(self, prompts: list, trainer) -> dict:
        mode = "train" if self.model.training else "eval"
        protocol = self.search_rollout.protocol  # tool calls: the search tool, and the template tool turns render with
        prompt_ids = tokenize_prompts(
            prompts,
            self.processing_class,
            self.chat_template_kwargs,
            protocol.chat_template or self.chat_template,
            tools=protocol.tools,
        )
        self._warn_if_over_context(prompt_ids)
        golden_answers = None
        if self._rollout_inputs is not None and len(self._rollout_inputs) == len(prompts):
            golden_answers = [row.get("golden_answers") for row in self._rollout_inputs]
        if self.use_vllm:
            output = self._rollout_with_vllm(prompt_ids, golden_answers)
        else:
            output = self._rollout_with_transformers(prompt_ids, golden_answers)
        self._log_rollout_metrics(output, mode)
        samples = output.samples
        # vLLM reports the sampling logprob of every generated token (injected tokens carry 0.0 and are masked);
        # transformers sampling gives none, and zeros would fake an off-policy correction.
        logprobs = None
        if self.use_vllm and all(sample.logprobs is not None for sample in samples):
            logprobs = [sample.logprobs for sample in samples]
        return {
            "prompt_ids": [sample.prompt_ids for sample in samples],
            "completion_ids": [sample.completion_ids for sample in samples],
            "logprobs": logprobs,
            "env_mask": [sample.env_mask for sample in samples],
            "num_searches": [sample.num_searches for sample in samples],
            "search_queries": [sample.queries for sample in samples],
            "retrieved_texts": [sample.retrieved_texts for sample in samples],
            "answer_in_retrieval": [sample.answer_in_retrieval for sample in samples],
            # The answer the rollout executed; the rewards score exactly this (see trl_search.rewards).
            "predicted_answer": [sample.predicted_answer for sample in samples],
        }

    def _rollout_with_transformers(self, prompt_ids, golden_answers) -> RolloutOutput:
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            full_params_context(self),
        ):
            if self._generator is None:
                self._generator = TransformersGenerator(
                    unwrapped_model,
                    processing_tokenizer(self),
                    self.generation_config,
                    eos_token_ids=self.eos_token_ids,
                )
            self._generator.model = unwrapped_model
            self._generator.collective_forward = self._forward_is_collective()
            try:
                return self.search_rollout.run(
                    prompt_ids, self._generator, golden_answers, any_active=self._any_rank_active
                )
            finally:
                self._generator.release()  # the key/value cache kept across turns is not needed for training

    def _rollout_with_vllm(self, prompt_ids, golden_answers) -> RolloutOutput:
        # TRL's `_generate` has already pushed the current weights into the engine (`vllm_generation.sync_weights`).
        if self._vllm_generator is None:
            self._vllm_generator = make_vllm_generator(
                self.vllm_generation, processing_tokenizer(self), self.eos_token_ids
            )
        with self._vllm_generator.session(self.vllm_generation):
            return self.search_rollout.run(
                prompt_ids,
                self._vllm_generator,
                golden_answers,
                any_active=self._any_rank_active,
                with_logprobs=True,
            )

    def search_settings(self) -> dict:
        """The search settings saved with the model (`search_config.json`); see `trl_search.hub`."""
        prompt_format = None
        if self.train_dataset is not None and "prompt" in getattr(self.train_dataset, "column_names", []):
            prompt_format = "conversational" if isinstance(self.train_dataset[0]["prompt"], list) else "text"
        return search_settings(self.args, self.retriever, prompt_format=prompt_format)

    # Every save (checkpoints, `save_model`, `push_to_hub`) writes the search settings next to the weights.
    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            save_search_settings(
                output_dir if output_dir is not None else self.args.output_dir, self.search_settings()
            )

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card plus a section on the search setup and how to run the model with a retriever."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        model_id = self.hub_model_id or self.args.hub_model_id or model_name or self.args.output_dir
        with open(path, encoding="utf-8") as handle:
            card = handle.read()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(card.rstrip("\n") + "\n" + model_card_section(self.search_settings(), model_id))

    def _warn_if_over_context(self, prompt_ids: list[list[int]]) -> None:
        context = getattr(self.model.config, "max_position_embeddings", None)
        if not context:
            return
        over = sum(len(ids) + self.args.max_completion_length > context for ids in prompt_ids)
        if over:
            warnings.warn(
                f"{over} of {len(prompt_ids)} prompts plus max_completion_length ({self.args.max_completion_length}) "
                f"exceed the model's context of {context} tokens (longest prompt: {max(map(len, prompt_ids))} tokens); "
                "their late turns will be cut or degrade. Shorten the prompts or lower --max_completion_length.",
                stacklevel=2,
            )

    def _forward_is_collective(self) -> bool:
        if self.accelerator.num_processes == 1:
            return False
        if self.is_deepspeed_enabled:
            plugin = self.accelerator.state.deepspeed_plugin
            return plugin.zero_stage == 3 and not self.args.ds3_gather_for_generation
        return self.is_fsdp_enabled

    def _any_rank_active(self, local_active: bool) -> bool:
        # Generation under ZeRO-3/FSDP is a collective: every rank must run the same number of turns.
        if self.accelerator.num_processes == 1:
            return local_active
        flags = self.accelerator.gather(torch.tensor([int(local_active)], device=self.accelerator.device))
        return bool(flags.sum().item() > 0)

    def _log_rollout_metrics(self, output: RolloutOutput, mode: str) -> None:
        device = self.accelerator.device
        sums = output.statistic_sums()
        names = list(sums)
        totals = dict(zip(names, self.accelerator.gather(torch.tensor([list(sums.values())], device=device)).sum(0)))
        totals = {name: value.item() for name, value in totals.items()}
        per_rank = self.accelerator.gather(
            torch.tensor([[output.retriever_seconds, output.retriever_calls]], dtype=torch.float32, device=device)
        )
        metrics = trainer_metrics(self, mode)
        # The ratios over all ranks' samples, named as in the evaluation's summary (one vocabulary: rollout_metrics).
        for name, value in rollout_metrics(totals).items():
            metrics[f"search/{name}"].append(value)
        metrics["search/retriever_seconds"].append(per_rank[:, 0].max().item())  # the slowest rank gates the step
        metrics["search/retriever_calls"].append(per_rank[:, 1].max().item())
        # A CachedRetriever (directly, or inside a GatheredRetriever) reports its hit rate for this step.
        cache = self.retriever if hasattr(self.retriever, "reset_stats") else None
        if cache is not None:
            metrics["search/cache_hit_rate"].append(cache.hit_rate)
            cache.reset_stats()


# GRPOConfig settings that change how TRL generates; the search rollout owns generation, so they would be ignored.
_UNSUPPORTED_SETTINGS = {
    "vllm_structured_outputs_regex": "the search rollout stops on the protocol's tags; a regex would be ignored",
    "use_transformers_continuous_batching": "the search rollout runs its own per-turn `generate` calls",
    "use_transformers_paged": "the search rollout runs its own per-turn `generate` calls",
    "max_tool_calling_iterations": "TRL's tool loop is not used; the number of searches is --max_turns",
}


def _refuse_unsupported_settings(args) -> None:
    """Refuses, by name, GRPOConfig settings that the search rollout does not honour (rather than ignoring them)."""
    for name, why in _UNSUPPORTED_SETTINGS.items():
        if getattr(args, name, None) not in (None, False):
            raise ValueError(f"SearchGRPOTrainer does not support `{name}` ({why}); unset it.")
    owned = {"stop_strings", "max_new_tokens", "max_length", "eos_token_id"} & set(args.generation_kwargs or {})
    if owned:
        raise ValueError(
            f"generation_kwargs sets {sorted(owned)}, which the search rollout sets itself every turn (the protocol's "
            "stop strings, --max_tokens_per_turn, --max_completion_length); remove them."
        )


def _needs_golden_answers(reward_funcs) -> bool:
    import inspect

    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    for func in funcs:
        if isinstance(func, str) or not callable(func):
            continue
        try:
            parameters = inspect.signature(func).parameters
        except (TypeError, ValueError):
            continue
        golden = parameters.get("golden_answers")
        if golden is not None and golden.default is inspect.Parameter.empty:
            return True
    return False


def _check_dataset(dataset, reward_funcs, name: str) -> None:
    """Fails at construction, not at step 1, on a dataset the rollout or the rewards cannot use."""
    columns = getattr(dataset, "column_names", None)
    if dataset is None or columns is None:  # an iterable dataset: checked as rows arrive
        return
    if "prompt" not in columns:
        raise ValueError(f"{name} has no 'prompt' column (columns: {columns}); build prompts with make_search_prompt.")
    if "golden_answers" not in columns and _needs_golden_answers(reward_funcs):
        raise ValueError(
            f"{name} has no 'golden_answers' column (columns: {columns}), which the reward functions read. Add one "
            "(a list of accepted answers per row), e.g. dataset.map(lambda row: {'golden_answers': [row['answer']]})."
        )
    for index, prompt in enumerate(dataset["prompt"]):
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise ValueError(f"{name} row {index} has an empty prompt; drop it or fill it with make_search_prompt.")
