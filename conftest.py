"""Root pytest configuration, loaded before any test or doctest: everything offline, and the docstring examples of
`trl_search` run as doctests next to `tests/`."""

import importlib.util

from trl_search.offline_models import offline_environment


offline_environment()  # before any test imports transformers, datasets or TRL

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
