import json
import logging

import pytest

from trl_search.data import (
    DEFAULT_PROMPT_TEMPLATE,
    RAG_PROMPT_TEMPLATE,
    SAMPLE_CORPUS_PATH,
    SAMPLE_QUESTIONS_PATH,
    check_unique_ids,
    load_qa_dataset,
    make_search_prompt,
    make_training_mix,
    tokenize_prompts,
)
from trl_search.retrievers import passage_from_record
from trl_search.rewards import contains_answer
from trl_search.sample_data.generate import make_sample_data


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def flashrag_rows(prefix, count):
    """Rows in FlashRAG's format; ids restart at 0 in every source, as in the Hub repository."""
    return [
        {
            "id": f"{prefix}_{i}",
            "question": f"Who founded town {i}?",
            "golden_answers": [f"Founder {i}"],
            "metadata": {"source": prefix},
        }
        for i in range(count)
    ]


def test_make_search_prompt_default_template_and_chat_form():
    text = make_search_prompt("  Who founded Brantis? ")
    assert text == DEFAULT_PROMPT_TEMPLATE.replace("{question}", "Who founded Brantis?")
    for tag in ("<think>", "<search>", "</search>", "<information>", "<answer>", "</answer>"):
        assert tag in text
    assert make_search_prompt("Q?", conversational=True) == [
        {"role": "user", "content": text.replace("Who founded Brantis?", "Q?")}
    ]


def test_make_search_prompt_custom_templates_and_errors():
    assert (
        make_search_prompt("What {is} x?", template="JSON {a: 1} then {question}") == "JSON {a: 1} then What {is} x?"
    )
    rag = make_search_prompt("Q?", template=RAG_PROMPT_TEMPLATE, passages="Doc 1(Title: T) text\n")
    assert "Doc 1(Title: T) text\n" in rag and "Q?" in rag
    with pytest.raises(ValueError, match=r"\{question\}"):
        make_search_prompt("Q?", template="no placeholder")
    with pytest.raises(ValueError, match="passages"):
        make_search_prompt("Q?", template=RAG_PROMPT_TEMPLATE)


def test_tokenize_prompts_plain_and_chat(tiny_tokenizer):
    plain = tokenize_prompts(["Question: who?", "Question: when?"], tiny_tokenizer)
    assert plain == [tiny_tokenizer("Question: who?")["input_ids"], tiny_tokenizer("Question: when?")["input_ids"]]
    chat = tokenize_prompts([[{"role": "user", "content": "Question: who?"}]], tiny_tokenizer)
    decoded = tiny_tokenizer.decode(chat[0])
    assert decoded == "<|im_start|>user\nQuestion: who?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenize_prompts([], tiny_tokenizer) == []
    with pytest.raises(ValueError, match="mix"):
        tokenize_prompts(["a", [{"role": "user", "content": "b"}]], tiny_tokenizer)


def test_load_qa_dataset_from_a_jsonl_file_drops_unusable_rows(tmp_path, caplog):
    rows = flashrag_rows("test", 3) + [
        {"id": "test_3", "question": "  ", "golden_answers": ["x"]},
        {"id": "test_4", "question": "No gold?", "golden_answers": []},
        {"id": "test_5", "question": "Blank gold?", "golden_answers": ["", None]},
        {"id": "test_6", "question": "Scalar gold?", "golden_answers": 1722},
    ]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="trl_search.data"):
        dataset = load_qa_dataset("nq", path=str(path), template="Q: {question}")
    assert "dropped 3 of 7 rows" in caplog.text
    assert dataset.column_names == ["prompt", "golden_answers", "data_source", "id", "question"]
    assert dataset["id"] == ["nq/test_0", "nq/test_1", "nq/test_2", "nq/test_6"]
    assert dataset["golden_answers"][3] == ["1722"]
    assert dataset[0]["prompt"] == "Q: Who founded town 0?"
    assert set(dataset["data_source"]) == {"nq"}


def test_load_qa_dataset_from_hub_layout_prefers_test_then_dev(tmp_path):
    write_jsonl(tmp_path / "nq" / "test.jsonl", flashrag_rows("test", 2))
    write_jsonl(tmp_path / "nq" / "dev.jsonl", flashrag_rows("dev", 5))
    write_jsonl(tmp_path / "hotpotqa" / "dev.jsonl", flashrag_rows("dev", 4))
    assert load_qa_dataset("nq", path=str(tmp_path))["id"] == ["nq/test_0", "nq/test_1"]
    assert load_qa_dataset("nq", path=str(tmp_path)).split == "test"
    assert len(load_qa_dataset("nq", split="dev", path=str(tmp_path))) == 5
    hotpot = load_qa_dataset("hotpotqa", path=str(tmp_path), conversational=True, limit=3)
    assert len(hotpot) == 3 and hotpot[0]["prompt"][0]["role"] == "user" and hotpot.split == "dev"
    with pytest.raises(FileNotFoundError, match="musique/<split>.jsonl"):
        load_qa_dataset("musique", path=str(tmp_path))


def test_load_qa_dataset_from_the_hub_falls_back_to_dev(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    write_jsonl(tmp_path / "dev.jsonl", flashrag_rows("dev", 3))
    requested = []

    def fake_download(repo_id, filename, repo_type):
        requested.append((repo_id, filename, repo_type))
        if filename.endswith("test.jsonl"):  # HotpotQA has no test split on the Hub
            raise errors.RemoteEntryNotFoundError.__new__(errors.RemoteEntryNotFoundError)
        return str(tmp_path / "dev.jsonl")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    dataset = load_qa_dataset("hotpotqa")
    assert requested == [
        ("RUC-NLPIR/FlashRAG_datasets", "hotpotqa/test.jsonl", "dataset"),
        ("RUC-NLPIR/FlashRAG_datasets", "hotpotqa/dev.jsonl", "dataset"),
    ]
    assert dataset["id"] == ["hotpotqa/dev_0", "hotpotqa/dev_1", "hotpotqa/dev_2"]

    def offline(repo_id, filename, repo_type):
        raise errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="--data_dir"):
        load_qa_dataset("nq")


def test_load_qa_dataset_from_parquet(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "popqa").mkdir()
    pq.write_table(pyarrow.Table.from_pylist(flashrag_rows("test", 3)), tmp_path / "popqa" / "test.parquet")
    dataset = load_qa_dataset("popqa", path=str(tmp_path))
    assert dataset["golden_answers"] == [["Founder 0"], ["Founder 1"], ["Founder 2"]]


def test_load_qa_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_qa_dataset("not-a-set")
    with pytest.raises(FileNotFoundError):
        load_qa_dataset("nq", path=str(tmp_path / "missing"))
    path = write_jsonl(tmp_path / "empty.jsonl", [{"id": "0", "question": "", "golden_answers": ["x"]}])
    with pytest.raises(ValueError, match="no usable rows"):
        load_qa_dataset("nq", path=str(path))
    duplicated = write_jsonl(tmp_path / "dup.jsonl", flashrag_rows("test", 2) * 2)
    with pytest.raises(ValueError, match="Duplicate id"):
        load_qa_dataset("nq", path=str(duplicated))


def test_training_mix_keys_every_prompt_uniquely_across_sources(tmp_path):
    # Both sources number their rows train_0, train_1, ...: the per-source index that merged groups in Search-R1.
    write_jsonl(tmp_path / "nq" / "train.jsonl", flashrag_rows("train", 6))
    write_jsonl(tmp_path / "hotpotqa" / "train.jsonl", flashrag_rows("train", 4))
    mix = make_training_mix(["nq", "hotpotqa"], path=str(tmp_path), seed=0)
    assert len(mix) == 10 and len(set(mix["id"])) == 10
    assert sorted(mix["data_source"]) == ["hotpotqa"] * 4 + ["nq"] * 6
    assert all(row_id.startswith(source + "/") for row_id, source in zip(mix["id"], mix["data_source"]))
    # Shuffled deterministically, and the same question text in two sources stays two groups.
    assert mix["id"] == make_training_mix(["nq", "hotpotqa"], path=str(tmp_path), seed=0)["id"]
    assert mix["id"] != sorted(mix["id"])
    same_question = [row_id for row_id, q in zip(mix["id"], mix["question"]) if q == "Who founded town 0?"]
    assert sorted(same_question) == ["hotpotqa/train_0", "nq/train_0"]
    unshuffled = make_training_mix(["nq", "hotpotqa"], path=str(tmp_path), seed=None, limit_per_source=2)
    assert unshuffled["id"] == ["nq/train_0", "nq/train_1", "hotpotqa/train_0", "hotpotqa/train_1"]


def test_check_unique_ids():
    check_unique_ids(["nq/train_0", "hotpotqa/train_0"])
    with pytest.raises(ValueError, match="2 ids repeat"):
        check_unique_ids(["train_0", "train_1", "train_0", "train_1"])


def test_sample_dataset_splits_and_format():
    test = load_qa_dataset("sample")
    train = load_qa_dataset("sample", split="train")
    assert len(test) == 30 and len(train) == 70
    assert not set(test["id"]) & set(train["id"])
    assert set(test["data_source"]) == {"sample"}


def test_the_former_name_of_the_sample_data_names_the_new_one(tmp_path):
    with pytest.raises(ValueError, match="now called 'sample'.*--datasets sample"):
        load_qa_dataset("demo")
    with pytest.raises(ValueError, match="now called 'sample'"):
        make_training_mix(["sample", "demo"])
    # With a file, a name is only a label: "demo" stays usable for one's own data.
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"id": "1", "question": "Who?", "golden_answers": ["Nobody"]}) + "\n")
    assert load_qa_dataset("demo", path=str(path))["id"] == ["demo/1"]


def test_shipped_sample_data_is_what_the_seeded_generator_writes():
    corpus, questions = make_sample_data()
    with open(SAMPLE_CORPUS_PATH, encoding="utf-8") as handle:
        assert [json.loads(line) for line in handle] == corpus
    with open(SAMPLE_QUESTIONS_PATH, encoding="utf-8") as handle:
        assert [json.loads(line) for line in handle] == questions
    assert 200 <= len(corpus) <= 500 and 90 <= len(questions) <= 120


def test_sample_answers_are_in_the_corpus_and_not_in_the_question():
    corpus, questions = make_sample_data()
    passages = [passage_from_record(row) for row in corpus]
    assert all(passage.title and passage.text for passage in passages)
    texts = [passage.text for passage in passages]
    for row in questions:
        assert contains_answer(texts, row["golden_answers"]), row
        assert not contains_answer([row["question"]], row["golden_answers"]), row
