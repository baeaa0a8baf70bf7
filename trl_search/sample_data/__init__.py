"""The shipped sample data: `corpus.jsonl` (an invented encyclopedia) and `questions.jsonl` (questions about it),
written by `generate.py` for this project. `load_qa_dataset("sample")` and `load_retriever("sample")` read them."""
