"""trl-search: train LLMs to reason with a search engine (Search-R1) on top of Hugging Face TRL."""

__version__ = "0.1.0.dev0"

# The trainer pulls in TRL and torch: import it on first use so that `trl_search.rewards` or the retrievers load fast.
_LAZY = {
    "SearchGRPOConfig": "trl_search.search_grpo_config",
    "SearchGRPOTrainer": "trl_search.search_grpo_trainer",
    "evaluate": "trl_search.evaluation",
    "load_search_settings": "trl_search.hub",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_search' has no attribute {name!r}")


__all__ = ["SearchGRPOConfig", "SearchGRPOTrainer", "__version__", "evaluate", "load_search_settings"]
