"""QA data for search training and evaluation: prompts, the dataset registry and loaders, the training mix.

Every loader returns a `datasets.Dataset` with the columns the trainer and the evaluation read:
`prompt` (a string, or a one-message conversation with `conversational=True`), `golden_answers` (a list of strings),
`data_source` (the registry name), `id` (unique across sources: `"<data_source>/<id in the source>"`) and `question`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


logger = logging.getLogger(__name__)

SAMPLE_DATA_DIR = os.path.join(os.path.dirname(__file__), "sample_data")
SAMPLE_CORPUS_PATH = os.path.join(SAMPLE_DATA_DIR, "corpus.jsonl")
SAMPLE_QUESTIONS_PATH = os.path.join(SAMPLE_DATA_DIR, "questions.jsonl")
FLASHRAG_REPO = "RUC-NLPIR/FlashRAG_datasets"

# The instructions are our own wording of the Search-R1 protocol. `{question}` is replaced by the question (plain
# substitution, so braces elsewhere in a custom template need no escaping). The example answer in the prompt is harmless:
# rewards read the completion alone, never the prompt.
DEFAULT_PROMPT_TEMPLATE = (
    "Answer the question below. You may consult a search engine as many times as you need.\n"
    "Each time you start or get new results, reason first, between <think> and </think>.\n"
    "If a fact is missing, write one search query between <search> and </search>; the results will come back "
    "between <information> and </information>.\n"
    "Once you are sure, give only the final answer, a few words at most, between <answer> and </answer>, "
    "like <answer> Ada Lovelace </answer>.\n"
    "Question: {question}\n"
)
# The two baselines of the paper, with the same answer format. `{passages}`: one `Doc i(Title: ...) text` line each.
DIRECT_PROMPT_TEMPLATE = (
    "Answer the question below from what you know.\n"
    "Reason first, between <think> and </think>. Then give only the final answer, a few words at most, between "
    "<answer> and </answer>, like <answer> Ada Lovelace </answer>.\n"
    "Question: {question}\n"
)
RAG_PROMPT_TEMPLATE = (
    "Answer the question below. These passages from a search engine may help:\n"
    "{passages}"
    "Reason first, between <think> and </think>. Then give only the final answer, a few words at most, between "
    "<answer> and </answer>, like <answer> Ada Lovelace </answer>.\n"
    "Question: {question}\n"
)
# For search_protocol="tool_call": the `search` tool itself reaches the model through its chat template; the prompt
# only asks for its use and for a short final answer (the reward reads the final assistant message).
TOOL_CALL_PROMPT_TEMPLATE = (
    "Answer the question below. Call the search tool whenever a fact is missing, as many times as you need, and "
    "reason about what it returns. When you are sure, reply with only the final answer, a few words at most.\n"
    "Question: {question}\n"
)


def make_search_prompt(
    question: str, template: str | None = None, conversational: bool = False, passages: str | None = None
) -> str | list[dict]:
    """Fills a prompt template with a question: a plain string for base models, a user message for chat models.

    Args:
        question: the question, stripped of surrounding white space.
        template: a string with a `{question}` placeholder; defaults to `DEFAULT_PROMPT_TEMPLATE`.
        conversational: return `[{"role": "user", "content": ...}]` (TRL's conversational prompt) instead of text.
        passages: text for a `{passages}` placeholder (the RAG baseline); the template must have one if given.

    Example:
        >>> make_search_prompt("Who founded Brantis?", template="Q: {question}")
        'Q: Who founded Brantis?'
        >>> make_search_prompt("Who founded Brantis?", template="Q: {question}", conversational=True)
        [{'role': 'user', 'content': 'Q: Who founded Brantis?'}]
    """
    template = DEFAULT_PROMPT_TEMPLATE if template is None else template
    if "{question}" not in template:
        raise ValueError("A prompt template needs a {question} placeholder, e.g. 'Question: {question}\\n'.")
    if (passages is not None) != ("{passages}" in template):
        raise ValueError(
            "Pass `passages` exactly when the template has a {passages} placeholder (RAG_PROMPT_TEMPLATE)."
        )
    text = template
    if passages is not None:
        text = text.replace("{passages}", passages)
    text = text.replace("{question}", question.strip())
    return [{"role": "user", "content": text}] if conversational else text


def tokenize_prompts(
    prompts: Sequence[str | list[dict]],
    tokenizer,
    chat_template_kwargs: dict | None = None,
    chat_template: str | None = None,
    tools: list[dict] | None = None,
) -> list[list[int]]:
    """Tokenises prompts as TRL's `GRPOTrainer` does: conversations through the chat template with the generation
    prompt, plain strings with the tokenizer (including its own special tokens, such as a BOS). The trainer and the
    evaluation both call it, so a model is evaluated on exactly the tokens it was trained on. `chat_template`
    overrides the tokenizer's template (as TRL's `chat_template_path` does); `tools` (JSON schemas) are shown to
    the model through the chat template (the `tool_call` search protocol's `search` tool).

    Example:
        >>> tokenize_prompts([[{"role": "user", "content": "Who founded Brantis?"}]], tokenizer)  # doctest: +SKIP
        [[2, 88, 86, ...]]
    """
    prompts = list(prompts)
    if not prompts:
        return []
    conversational = [isinstance(prompt, list) for prompt in prompts]
    if tools and not all(conversational):
        raise ValueError(
            "Tool calls go through the chat template: give conversational prompts ([{'role': 'user', 'content': ...}]), "
            "e.g. make_search_prompt(question, TOOL_CALL_PROMPT_TEMPLATE, conversational=True)."
        )
    if all(conversational):
        encoded = tokenizer.apply_chat_template(
            prompts,
            tools=tools,
            chat_template=chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **(chat_template_kwargs or {}),
        )
        return [list(ids) for ids in encoded["input_ids"]]
    if any(conversational):
        raise ValueError("Prompts mix plain strings and conversations; make them all one kind.")
    return [list(ids) for ids in tokenizer(text=prompts)["input_ids"]]


# --- Dataset registry ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QADatasetInfo:
    """One evaluation or training set: where it lives and how the paper's table labels it."""

    label: str  # column header in the paper's table
    multi_hop: bool
    hub_config: str | None = None  # folder in FLASHRAG_REPO
    local_file: str | None = None  # shipped file (the sample data)


QA_DATASETS = {
    "nq": QADatasetInfo("NQ", False, hub_config="nq"),
    "triviaqa": QADatasetInfo("TriviaQA", False, hub_config="triviaqa"),
    "popqa": QADatasetInfo("PopQA", False, hub_config="popqa"),
    "hotpotqa": QADatasetInfo("HotpotQA", True, hub_config="hotpotqa"),
    "2wikimultihopqa": QADatasetInfo("2wiki", True, hub_config="2wikimultihopqa"),
    "musique": QADatasetInfo("Musique", True, hub_config="musique"),
    "bamboogle": QADatasetInfo("Bamboogle", True, hub_config="bamboogle"),
    "sample": QADatasetInfo("Sample", True, local_file=SAMPLE_QUESTIONS_PATH),
}
# The shipped data's former registry name; refused with a message naming the new one.
_OLD_SAMPLE_NAME = "demo"
# The paper's seven evaluation sets, in its column order.
PAPER_DATASETS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
# Splits tried in order when none is given: the paper evaluates on test where a set has one, else on dev.
DEFAULT_SPLITS = ("test", "dev")
_EXTENSIONS = (".jsonl", ".json", ".parquet")


def _read_rows(path: str) -> list[dict]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".json"):
            content = json.load(handle)
            return content if isinstance(content, list) else content.get("data", [])
        return [json.loads(line) for line in handle if line.strip()]


def _local_file(directory: str, name: str, split: str | None) -> tuple[str, str]:
    """Finds `<directory>/<name>/<split>.<ext>` (the Hub repository's layout) or `<directory>/<name>_<split>.<ext>`."""
    for candidate_split in [split] if split else DEFAULT_SPLITS:
        for extension in _EXTENSIONS:
            for path in (
                os.path.join(directory, name, candidate_split + extension),
                os.path.join(directory, f"{name}_{candidate_split}{extension}"),
            ):
                if os.path.isfile(path):
                    return path, candidate_split
    wanted = split or " or ".join(DEFAULT_SPLITS)
    raise FileNotFoundError(
        f"No {wanted} file for {name!r} under {directory!r}: expected {name}/<split>.jsonl (or .parquet), as in the "
        f"Hub repository {FLASHRAG_REPO}."
    )


def _hub_file(name: str, split: str | None) -> tuple[str, str]:
    """Downloads `<name>/<split>.jsonl` from FlashRAG's Hub repository (test, else dev, when no split is given)."""
    from huggingface_hub import errors, hf_hub_download

    missing_remotely = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    for candidate_split in [split] if split else DEFAULT_SPLITS:
        try:
            path = hf_hub_download(FLASHRAG_REPO, f"{name}/{candidate_split}.jsonl", repo_type="dataset")
            return path, candidate_split
        except missing_remotely:
            continue  # this set has no such split: try the next one
        except (errors.LocalEntryNotFoundError, OSError) as error:
            raise RuntimeError(
                f"Could not download {name}/{candidate_split}.jsonl from {FLASHRAG_REPO} (offline?). Copy the files "
                f"into a local directory as <dir>/{name}/<split>.jsonl and pass path=<dir> (--data_dir <dir>)."
            ) from error
    raise ValueError(f"{FLASHRAG_REPO} has no {split or 'test or dev'} split for {name!r}.")


def _clean_answers(value) -> list[str]:
    if value is None:
        return []
    values = [value] if isinstance(value, (str, int, float)) else list(value)
    return [str(answer).strip() for answer in values if answer is not None and str(answer).strip()]


def qa_rows(
    rows: Iterable[dict],
    data_source: str,
    template: str | None = None,
    conversational: bool = False,
    split: str | None = None,
) -> list[dict]:
    """Turns FlashRAG-format rows (`id`, `question`, `golden_answers`, ...) into the package's columns.

    Rows with an empty question or no gold answer are dropped, and the count is logged. Ids are prefixed with the
    source so that they stay unique when sources are mixed; a row without an id gets its position.

    Example:
        >>> qa_rows([{"id": "7", "question": "Who?", "golden_answers": ["Nobody"]}], "nq", template="{question}")
        [{'prompt': 'Who?', 'golden_answers': ['Nobody'], 'data_source': 'nq', 'id': 'nq/7', 'question': 'Who?'}]
    """
    out, dropped, seen = [], 0, set()
    for position, row in enumerate(rows):
        if (
            split is not None
            and isinstance(row.get("metadata"), dict)
            and row["metadata"].get("split", split) != split
        ):
            continue
        question = str(row.get("question") or "").strip()
        answers = _clean_answers(row.get("golden_answers", row.get("answer")))
        if not question or not answers:
            dropped += 1
            continue
        row_id = f"{data_source}/{row.get('id', position)}"
        if row_id in seen:
            raise ValueError(f"Duplicate id {row_id!r} in {data_source}: ids must be unique within a source.")
        seen.add(row_id)
        out.append(
            {
                "prompt": make_search_prompt(question, template, conversational),
                "golden_answers": answers,
                "data_source": data_source,
                "id": row_id,
                "question": question,
            }
        )
    if dropped:
        total = dropped + len(out)
        logger.warning(
            "%s: dropped %d of %d rows with an empty question or no gold answer.", data_source, dropped, total
        )
    return out


def load_qa_dataset(
    name: str,
    split: str | None = None,
    path: str | os.PathLike | None = None,
    template: str | None = None,
    conversational: bool = False,
    limit: int | None = None,
):
    """Loads a QA set as a `datasets.Dataset` with `prompt`, `golden_answers`, `data_source`, `id` and `question`.

    Args:
        name: a registry name (`nq`, `triviaqa`, `popqa`, `hotpotqa`, `2wikimultihopqa`, `musique`, `bamboogle`, or
            the shipped `sample`), or any label when `path` is a file.
        split: `train`, `dev` or `test`; by default test where the set has one, else dev (the paper's choice).
        path: a local file (JSONL/JSON/parquet in FlashRAG's row format) or a directory laid out like the Hub
            repository (`<path>/<name>/<split>.jsonl`). Without it, registry sets download from
            `RUC-NLPIR/FlashRAG_datasets`.
        template: the prompt template (default `DEFAULT_PROMPT_TEMPLATE`).
        conversational: make each prompt a one-message conversation (for chat models).
        limit: keep the first `limit` rows (after dropping unusable ones).

    The split that was read is `dataset.split` (None for a single file given as `path`).

    Example:
        >>> dataset = load_qa_dataset("sample", limit=2)
        >>> dataset.column_names
        ['prompt', 'golden_answers', 'data_source', 'id', 'question']
        >>> dataset[0]["id"]
        'sample/test_0'
    """
    from datasets import Dataset

    info = QA_DATASETS.get(name)
    row_split = None  # the sample data keeps both splits in one file, told apart by metadata["split"]
    if path is not None and os.path.isfile(path):
        file_path = os.fspath(path)
    elif path is not None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} is neither a file nor a directory of QA data.")
        file_path, split = _local_file(os.fspath(path), name, split)
    elif name == _OLD_SAMPLE_NAME:
        raise ValueError(
            "The shipped data is now called 'sample': use load_qa_dataset('sample') / --datasets sample ('demo' is "
            "the learning demo, `trl-search demo`)."
        )
    elif info is None:
        raise ValueError(f"Unknown dataset {name!r}: choose one of {sorted(QA_DATASETS)}, or pass `path` to a file.")
    elif info.local_file is not None:
        file_path, row_split = info.local_file, split or DEFAULT_SPLITS[0]
    else:
        file_path, split = _hub_file(info.hub_config, split)
    rows = qa_rows(_read_rows(file_path), name, template, conversational, split=row_split)
    if not rows:
        raise ValueError(f"{file_path} has no usable rows (each needs a non-empty question and a gold answer).")
    if limit is not None:
        rows = rows[:limit]
    split = split or row_split
    logger.info("Loaded %d questions of %s (%s) from %s.", len(rows), name, split or "whole file", file_path)
    return Dataset.from_list(rows, split=split)  # `dataset.split` tells which split the default chose


def make_training_mix(
    names: Sequence[str] = ("nq", "hotpotqa"),
    split: str = "train",
    path: str | os.PathLike | None = None,
    template: str | None = None,
    conversational: bool = False,
    seed: int | None = 0,
    limit_per_source: int | None = None,
):
    """The paper's training set: several QA sets (by default NQ + HotpotQA train) in one shuffled dataset.

    Each row keeps a globally unique `id` (`"<data_source>/<id>"`) and its `data_source`. TRL's sampler repeats each
    row `num_generations` times in a row, so a GRPO group is one row: one prompt. Search-R1's merge scripts restarted
    the row index per source, so an NQ and a HotpotQA question could share an index and be treated as one group;
    here a repeated id is an error.

    Example:
        >>> mix = make_training_mix(["nq", "hotpotqa"], path="flashrag_data")  # doctest: +SKIP
        >>> sorted(set(mix["data_source"]))  # doctest: +SKIP
        ['hotpotqa', 'nq']
    """
    from datasets import concatenate_datasets

    if not names:
        raise ValueError("make_training_mix needs at least one dataset name.")
    parts = [load_qa_dataset(name, split, path, template, conversational, limit_per_source) for name in names]
    mix = concatenate_datasets(parts)
    check_unique_ids(mix["id"])
    return mix.shuffle(seed=seed) if seed is not None else mix


def check_unique_ids(ids: Iterable[str]) -> None:
    """Raises if an id repeats: every prompt must be its own GRPO group and its own line in the results.

    Example:
        >>> check_unique_ids(["nq/train_0", "hotpotqa/train_0"])
        >>> check_unique_ids(["train_0", "train_0"])
        Traceback (most recent call last):
        ...
        ValueError: 1 ids repeat (e.g. 'train_0'): prefix ids with their source, as load_qa_dataset does.
    """
    seen, repeated = set(), []
    for row_id in ids:
        if row_id in seen:
            repeated.append(row_id)
        seen.add(row_id)
    if repeated:
        raise ValueError(
            f"{len(repeated)} ids repeat (e.g. {repeated[0]!r}): prefix ids with their source, as load_qa_dataset does."
        )
