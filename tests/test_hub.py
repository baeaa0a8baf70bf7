"""Search settings saved with the model, the model card, and `push_to_hub` with the Hub upload replaced by a fake."""

import json
import os
import types

import pytest
import transformers.trainer
from huggingface_hub.utils import filter_repo_objects

from trl_search import SearchGRPOTrainer
from trl_search.data import make_search_prompt
from trl_search.hub import SEARCH_SETTINGS_NAME, load_search_settings
from trl_search.retrievers import BM25Retriever

from .scripted import script_model_forward
from .test_trainer import CORPUS, SCRIPTS, make_config, make_dataset


class FakeHubApi:
    """`huggingface_hub.HfApi` as `Trainer.push_to_hub` calls it: records the repository and the files it would upload
    (with the same ignore-pattern filtering as `upload_folder`)."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        self.repos.append(repo_id)
        return types.SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, commit_message=None, token=None, run_as_future=False,
                      ignore_patterns=None, revision=None, **kwargs):  # fmt: skip
        paths = [
            os.path.relpath(os.path.join(root, name), folder_path)
            for root, _, names in os.walk(folder_path)
            for name in names
        ]
        files = sorted(filter_repo_objects(paths, ignore_patterns=ignore_patterns))
        self.uploads.append(
            {"repo_id": repo_id, "files": files, "contents": {f: os.path.join(folder_path, f) for f in files}}
        )
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/fake")


@pytest.fixture()
def fake_hub(monkeypatch):
    api = FakeHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    return api


def test_push_to_hub_uploads_the_model_with_its_search_settings_and_card(
    fake_hub, monkeypatch, tmp_path, tiny_model, tiny_tokenizer
):
    script_model_forward(tiny_model, tiny_tokenizer, SCRIPTS)
    template = "Search, then answer.\nQuestion: {question}\n"
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        args=make_config(tmp_path, max_steps=1, hub_model_id="someone/tiny-searcher", prompt_template=template),
        train_dataset=make_dataset(),
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS, backend="numpy"),
    )
    trainer.train()
    trainer.push_to_hub(dataset_name="demo")

    assert fake_hub.repos == ["someone/tiny-searcher"]
    (upload,) = fake_hub.uploads
    assert upload["repo_id"] == "someone/tiny-searcher"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert name in upload["files"]
    assert SEARCH_SETTINGS_NAME in upload["files"]

    with open(upload["contents"][SEARCH_SETTINGS_NAME]) as handle:
        settings = json.load(handle)
    assert settings["protocol"] == "tags"
    assert settings["stop_strings"] == ["</search>", "</answer>"]
    assert settings["prompt_template"] == template
    assert settings["prompt_format"] == "text"
    assert (settings["max_turns"], settings["retrieval_top_k"], settings["max_obs_length"]) == (2, 2, 64)
    assert settings["retriever"]["class"] == "BM25Retriever" and settings["retriever"]["passages"] == len(CORPUS)

    with open(upload["contents"]["README.md"]) as handle:
        card = handle.read()
    assert "SearchGRPO" in card and "trl-search" in card and "search-r1" in card  # TRL's card, our tags
    assert "## Search" in card
    assert "| Searches per question (max) | 2 |" in card and "| Passages per search | 2 |" in card
    assert "trl-search eval --model someone/tiny-searcher --retriever" in card
    assert "BM25Retriever" in card

    # inference reads the settings back, from the directory or from the Hub repository
    assert load_search_settings(trainer.args.output_dir) == settings
    uploaded = upload["contents"]

    def hf_hub_download(repo_id, filename, revision=None, **kwargs):
        assert repo_id == "someone/tiny-searcher"
        return uploaded[filename]

    monkeypatch.setattr("huggingface_hub.hf_hub_download", hf_hub_download)
    settings_from_hub = load_search_settings("someone/tiny-searcher")
    assert settings_from_hub == settings
    prompt = make_search_prompt("Who founded Brantis?", template=settings_from_hub["prompt_template"])
    assert prompt == "Search, then answer.\nQuestion: Who founded Brantis?\n"


def test_checkpoints_carry_the_search_settings_and_models_without_them_load_none(
    tmp_path, tiny_model, tiny_tokenizer, tiny_model_dir
):
    script_model_forward(tiny_model, tiny_tokenizer, SCRIPTS)
    trainer = SearchGRPOTrainer(
        model=tiny_model,
        args=make_config(tmp_path, max_steps=1, save_strategy="steps", save_steps=1),
        train_dataset=make_dataset(),
        processing_class=tiny_tokenizer,
        retriever=BM25Retriever.build(CORPUS, backend="numpy"),
    )
    trainer.train()
    checkpoint = os.path.join(trainer.args.output_dir, "checkpoint-1")
    settings = load_search_settings(checkpoint)
    assert settings["prompt_template"] is None  # not given: the dataset's prompts were made elsewhere
    assert settings["retrieval_top_k"] == 2 and settings["mask_retrieved_tokens"] is True
    assert load_search_settings(tiny_model_dir) is None
