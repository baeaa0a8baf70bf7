"""Shared fixtures: everything offline, tiny models and tokenizers built on the fly."""

# The offline environment (HF_HUB_OFFLINE, ...) is set by the root conftest.py, which pytest loads first.
import pytest

from trl_search.offline_models import build_model, build_tokenizer


TOKENIZER_TEXTS = [
    "<think> I need to find the capital of Veldoria. </think> <search> capital of Veldoria </search>",
    "<information>Doc 1(Title: Veldoria) Veldoria is a country whose capital is Quarnel.\n</information>",
    "<think> The passage says Quarnel. </think> <answer> Quarnel </answer>",
    "Answer the question. Think inside <think> and </think>, search with <search> query </search>, "
    "read <information> results </information>, and answer with <answer> answer </answer>.",
    "Question: Who founded the city of Brantis? Question: When was Ostavel founded?",
    "the a an of in on and to is was by for with from at as it this that which who what when where",
] * 4


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer(TOKENIZER_TEXTS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny Qwen2 model + tokenizer directory, loadable with `from_pretrained` (stands in for a Hub id)."""
    directory = tmp_path_factory.mktemp("tiny-qwen2")
    build_model(tiny_tokenizer).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return build_model(tiny_tokenizer)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Runs a module's tests with one torch thread: on 2 shared cores, two spinning threads make small encodes slow."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
