"""Every private TRL internal that trl-search touches, one small function each.

TRL's public hooks (`rollout_func`, `env_mask`, reward-function keyword arguments) carry most of the integration. What
they do not reach lives here, so that a TRL upgrade that moves one of these fails one named test in
`tests/test_trl_compat.py` instead of a training run. The supported TRL versions are pinned in setup.cfg.
"""

from __future__ import annotations

from contextlib import nullcontext


# Methods of `GRPOTrainer` that `SearchGRPOTrainer` overrides, calling TRL's own version inside:
# - `_generate_and_score_completions(inputs)`: to keep the batch's rows (gold answers) beside the rollout hook, which
#   only receives the prompts;
# - `_save(output_dir, state_dict)`: to write `search_config.json` beside every checkpoint and saved model.
OVERRIDDEN_METHODS = ("_generate_and_score_completions", "_save")


def metrics(trainer, mode: str) -> dict:
    """The trainer's metric lists for `mode` (`"train"` or `"eval"`), which TRL averages and logs each step.

    Example:
        >>> metrics(trainer, "train")["search/searches_per_sample"].append(1.0)  # doctest: +SKIP
    """
    return trainer._metrics[mode]


def processing_tokenizer(trainer):
    """The text tokenizer TRL uses (the processor's tokenizer for vision-language models)."""
    return trainer._tokenizer


def full_params_context(trainer):
    """FSDP's `summon_full_params` around generation, as TRL's own generation does; a no-op without TRL's helper."""
    dist = getattr(trainer, "_dist", None)
    if dist is None:
        return nullcontext()
    return dist.summon_full_params(trainer.model_wrapped, recurse=False)


def sampling_settings(vllm_generation) -> dict:
    """The sampling parameters TRL's `VLLMGeneration` uses, as keyword arguments shared by both vLLM modes.

    `generation_kwargs` (from `GRPOConfig.generation_kwargs`) override the named ones, as in TRL.

    Example:
        >>> sampling_settings(trainer.vllm_generation)  # doctest: +SKIP
        {'repetition_penalty': 1.0, 'temperature': 1.0, 'top_p': 1.0, 'top_k': 0, 'min_p': 0.0, 'logprobs': 0}
    """
    settings = {
        "repetition_penalty": vllm_generation.repetition_penalty,
        "temperature": vllm_generation.temperature,
        "top_p": vllm_generation.top_p,
        "top_k": vllm_generation.top_k,
        "min_p": 0.0 if vllm_generation.min_p is None else vllm_generation.min_p,
        "logprobs": 0 if vllm_generation.logprobs is None else vllm_generation.logprobs,  # the sampled token's
    }
    extra = dict(vllm_generation.generation_kwargs or {})
    owned = sorted({"n", "max_tokens", "stop", "include_stop_str_in_output"} & set(extra))
    if owned:
        raise ValueError(
            f"generation_kwargs sets {owned}, which the search rollout sets itself on every turn (one sample per "
            "prompt, the turn's token budget, the protocol's stop strings kept in the output); remove them."
        )
    settings.update(extra)
    return settings


def wake_engine(vllm_generation) -> bool:
    """Wakes a sleeping colocated vLLM engine for a whole multi-turn rollout, as TRL's single-shot `generate` does
    around its one call: weights pushed again if a level-2 sleep dropped them, then the KV cache. Returns whether the
    engine sleeps between rollouts (then call `put_engine_to_sleep` after)."""
    if vllm_generation is None or not vllm_generation.enable_sleep_mode:
        return False
    if getattr(vllm_generation, "_llm_weights_sleeping", False):
        vllm_generation.sync_weights()
    vllm_generation.llm.wake_up(tags=["kv_cache"])
    return True


def put_engine_to_sleep(vllm_generation) -> None:
    """Puts the engine back to sleep (level 2: weights dropped) and records it as TRL does."""
    vllm_generation.llm.sleep(level=2)
    vllm_generation._llm_weights_sleeping = True


def extract_logprobs(outputs):
    """TRL's reading of vLLM's per-position logprobs from `LLM.generate` outputs: (logprobs, token_ids), each one
    list per completion, request-major."""
    from trl.generation.vllm_generation import extract_logprobs as trl_extract_logprobs

    return trl_extract_logprobs(outputs)
