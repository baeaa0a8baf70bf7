"""trl-search: train LLMs to reason with a search engine (Search-R1) on top of Hugging Face TRL."""

__version__ = "0.1.0.dev0"

from .search_grpo_config import SearchGRPOConfig
from .search_grpo_trainer import SearchGRPOTrainer


__all__ = ["SearchGRPOConfig", "SearchGRPOTrainer", "__version__"]
