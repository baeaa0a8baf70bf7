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
        metadata={"help": "How the policy searches and answers.", "choices": ["tags"]},
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
        from .protocols import PROTOCOLS

        if self.max_turns < 0:
            raise ValueError(f"max_turns must be >= 0 (0 disables searching), got {self.max_turns}. Set --max_turns.")
        if self.retrieval_top_k < 1:
            raise ValueError(
                f"retrieval_top_k is the number of passages per search and must be >= 1, got {self.retrieval_top_k}. "
                "Set --retrieval_top_k."
            )
        if self.max_obs_length < 8:
            raise ValueError(
                f"max_obs_length={self.max_obs_length} cannot hold even the <information> tags; set --max_obs_length "
                "to at least 8 (the paper uses 500)."
            )
        if self.max_tokens_per_turn < 1:
            raise ValueError(f"max_tokens_per_turn must be >= 1, got {self.max_tokens_per_turn}.")
        if self.search_protocol not in PROTOCOLS:
            raise ValueError(
                f"Unknown search_protocol {self.search_protocol!r}; set --search_protocol to one of {sorted(PROTOCOLS)}."
            )
        if self.max_completion_length is None:
            raise ValueError("max_completion_length must be set: the search rollout needs a token budget.")
        if self.max_turns > 0 and self.max_obs_length >= self.max_completion_length:
            raise ValueError(
                f"max_obs_length ({self.max_obs_length}) must be smaller than max_completion_length "
                f"({self.max_completion_length}): one observation would fill the whole completion. Lower "
                "--max_obs_length or raise --max_completion_length."
            )
        super().__post_init__()
