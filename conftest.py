"""Root pytest configuration, loaded before any test or doctest: everything offline, and the docstring examples of
`trl_search` run as doctests next to `tests/`."""

import importlib.util
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# Modules whose examples need an optional extra: their doctests are skipped where that extra is not installed.
_NEEDS = {
    "trl_search/server.py": "fastapi",
    "trl_search/commands/serve.py": "fastapi",
    "trl_search/retrievers/remote.py": "requests",
    "trl_search/retrievers/dense.py": "faiss",
    "trl_search/retrievers/vector_index.py": "faiss",
    "trl_search/demo/report.py": "matplotlib",
}
collect_ignore = [path for path, module in _NEEDS.items() if importlib.util.find_spec(module) is None]
