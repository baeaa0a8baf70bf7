"""Configuration of `SearchGRPOTrainer`: GRPO's settings plus the knobs of the search rollout."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig


@dataclass
class SearchGRPOConfig(GRPOConfig):
    r"""
    Configuration class for [`SearchGRPOTrainer`]: every [`trl.GRPOConfig`] parameter plus the search rollout.

    Parameters:
        max_turns (`int`, *optional*, defaults to `4`):
            Maximum number of searches per sample. A sample still open after `max_turns` searches gets one last turn
            in which it can only answer.
        retrieval_top_k (`int`, *optional*, defaults to `3`):
            Number of passages retrieved per search. (`top_k` keeps its `GRPOConfig` meaning: sampling top-k.)
        max_obs_length (`int`, *optional*, defaults to `500`):
            Maximum number of tokens of one observation (the retrieved passages with their `<information>` tags).
        max_tokens_per_turn (`int`, *optional*, defaults to `500`):
            Maximum number of tokens the policy generates in one turn.
        mask_retrieved_tokens (`bool`, *optional*, defaults to `True`):
            Exclude retrieved (and any other injected) tokens from the loss, the KL and the policy metrics.
        search_protocol (`str`, *optional*, defaults to `"tags"`):
            How the policy searches and answers. `"tags"`: Search-R1's `<search>`/`<information>`/`<answer>` tags.
            `"tool_call"`: a `search(query)` tool called through the model's chat template (instruct models); the
            passages come back as tool messages and the answer is the final assistant message.
        prompt_template (`str` or `None`, *optional*, defaults to `None`):
            The template the dataset's prompts were made with (see `trl_search.data.make_search_prompt`). It does not
            change training; it is saved with the model (`search_config.json`) so that inference uses the same prompt.
        gather_retrieval_queries (`bool`, *optional*, defaults to `False`):
            With several processes, gather the queries of all ranks to the main process for one retriever call per
            turn and scatter the passages back (one index or server connection for the whole job). By default each
            rank sends its own batch (to its in-process retriever or to its node's server).

    Example:
        >>> config = SearchGRPOConfig(output_dir="out", max_turns=4, retrieval_top_k=3, bf16=False, report_to="none")
        >>> config.max_completion_length
        2048
    """

    max_completion_length: int | None = field(
        default=2048,
        metadata={
            "help": "Maximum length of the whole completion: every turn's generated tokens plus the observations "
            "injected between them."
        },
    )
    max_turns: int = field(
        default=4,
        metadata={
            "help": "Maximum number of searches per sample. A sample still open after `max_turns` searches gets one "
            "last turn in which it can only answer. 0 disables searching."
        },
    )
    retrieval_top_k: int = field(
        default=3,
        metadata={"help": "Number of passages retrieved per search (`top_k` is GRPOConfig's sampling top-k)."},
    )
    max_obs_length: int = field(
        default=500,
        metadata={"help": "Maximum number of tokens of one observation, `<information>` tags included."},
    )
    max_tokens_per_turn: int = field(
        default=500,
        metadata={"help": "Maximum number of tokens the policy generates in one turn."},
    )
    mask_retrieved_tokens: bool = field(
        default=True,
        metadata={
            "help": "Exclude retrieved and other injected tokens from the loss, the KL and the policy metrics. "
            "False reproduces the paper's no-mask ablation."
        },
    )
    search_protocol: str = field(
        default="tags",
        metadata={
            "help": "How the policy searches and answers: 'tags' (Search-R1's <search>/<information>/<answer>, for "
            "base models) or 'tool_call' (a search tool called through the model's chat template).",
            "choices": ["tags", "tool_call"],
        },
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "The template the dataset's prompts were made with. Saved with the model (search_config.json) "
            "so that inference builds the same prompt; it does not change training."
        },
    )
    gather_retrieval_queries: bool = field(
        default=False,
        metadata={
            "help": "With several processes, send the queries of all ranks to the main process for one retriever call "
            "per turn and scatter the passages back. By default each rank queries its own retriever (or its node's "
            "server)."
        },
    )

    def __post_init__(self):
        if self.max_completion_length is None:
            raise ValueError("max_completion_length must be set: the search rollout needs a token budget.")
        if self.max_obs_length < 8:
            raise ValueError(
                f"max_obs_length={self.max_obs_length} cannot hold even the observation's markup; set "
                "--max_obs_length to at least 8 (the paper uses 500)."
            )
        if self.max_turns > 0 and self.max_obs_length >= self.max_completion_length:
            raise ValueError(
                f"max_obs_length ({self.max_obs_length}) must be smaller than max_completion_length "
                f"({self.max_completion_length}): one observation would fill the whole completion. Lower "
                "--max_obs_length or raise --max_completion_length."
            )
        _ = self.rollout_settings  # validates the rollout's own fields, naming the flag to change
        super().__post_init__()

    @property
    def rollout_settings(self):
        """The flat search fields as one validated `trl_search.rollout.RolloutSettings`."""
        from .rollout import RolloutSettings

        return RolloutSettings(
            protocol=self.search_protocol,
            max_turns=self.max_turns,
            retrieval_top_k=self.retrieval_top_k,
            max_obs_length=self.max_obs_length,
            max_tokens_per_turn=self.max_tokens_per_turn,
            max_completion_length=self.max_completion_length,
            mask_retrieved_tokens=self.mask_retrieved_tokens,
        )
