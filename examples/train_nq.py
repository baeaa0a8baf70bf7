# Train a model to search and answer (Search-R1) with GRPO on NQ + HotpotQA, or on the shipped sample data.
#
# One GPU:
#   python examples/train_nq.py --config examples/configs/qwen2.5-3b-grpo.yaml
# One node, 8 GPUs, DeepSpeed ZeRO-3:
#   accelerate launch --config_file examples/accelerate_configs/zero3.yaml examples/train_nq.py \
#       --config examples/configs/qwen2.5-3b-grpo.yaml
# Offline smoke run on CPU (tiny model built on the fly, shipped sample corpus and questions; a few minutes):
#   python examples/train_nq.py --config examples/configs/sample.yaml
#   accelerate launch --config_file examples/accelerate_configs/cpu_ddp.yaml examples/train_nq.py \
#       --config examples/configs/sample.yaml
#
# Every field of `SearchGRPOConfig` (TRL's `GRPOConfig` plus the search settings), of `SearchScriptArguments` below and
# of TRL's `ModelConfig` (model, dtype, LoRA) can be set in the YAML file or on the command line.
"""Search-R1 training with `SearchGRPOTrainer`: model, retriever and data from the command line or a YAML config."""

import logging
import os
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from trl_search import SearchGRPOConfig, SearchGRPOTrainer
from trl_search.data import (
    DEFAULT_PROMPT_TEMPLATE,
    SAMPLE_CORPUS_PATH,
    SAMPLE_QUESTIONS_PATH,
    TOOL_CALL_PROMPT_TEMPLATE,
    make_training_mix,
)


logger = logging.getLogger("train_nq")


@dataclass
class SearchScriptArguments:
    """What to train on and with which retriever.

    Parameters:
        retriever: a Search-R1 `/retrieve` URL (`trl-search serve`), an index directory (`trl-search index`), a JSONL
            corpus (indexed with BM25 at start-up) or `sample` (the shipped sample corpus).
        datasets: comma-separated QA sets of the training mix (`nq,hotpotqa` is the paper's).
        data_dir: a local copy of FlashRAG's QA sets (`<data_dir>/<name>/<split>.jsonl`); default: the Hub.
        prompt_style: `auto` (Search-R1's pipeline: the prompt as a user message through the chat template whenever
            the tokenizer has one, base models included), `chat` (always the chat template) or `text` (plain text).
            The format used is saved with the model (`search_config.json`), and `trl-search eval` uses it.
        sample_data: build a tiny model and tokenizer on the fly and train on the shipped sample data (offline, CPU).
    """

    retriever: str = field(
        default="http://127.0.0.1:8000/retrieve",
        metadata={"help": "Search-R1 /retrieve URL, index directory, JSONL corpus, or 'sample'."},
    )
    datasets: str = field(default="nq,hotpotqa", metadata={"help": "Comma-separated QA sets of the training mix."})
    train_split: str = field(default="train", metadata={"help": "Split of each QA set to train on."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Local copy of FlashRAG's QA sets (<data_dir>/<name>/<split>.jsonl)."}
    )
    limit_per_source: int | None = field(default=None, metadata={"help": "Keep at most this many rows per QA set."})
    prompt_style: str = field(
        default="auto",
        metadata={
            "help": "'auto': as Search-R1's pipeline, the prompt as a user message through the chat template whenever "
            "the tokenizer has one (base models included); 'chat': always; 'text': a plain-text prompt.",
            "choices": ["auto", "chat", "text"],
        },
    )
    prompt_template_file: str | None = field(
        default=None, metadata={"help": "A text file with a prompt template ({question} placeholder)."}
    )
    sample_data: bool = field(
        default=False,
        metadata={"help": "Build a tiny model on the fly and train on the shipped sample data (offline, CPU)."},
    )
    sample_model_hidden_size: int = field(default=64, metadata={"help": "Width of the tiny model of --sample_data."})
    sample_model_num_layers: int = field(default=2, metadata={"help": "Layers of the tiny model of --sample_data."})
    # The former name of --sample_data, kept only to say so ("demo" is the learning demo, `trl-search demo`).
    demo: bool = field(default=False, metadata={"help": "Renamed: use --sample_data."})

    def __post_init__(self):
        if self.demo:
            raise ValueError(
                "--demo (`demo: true`) is now --sample_data (`sample_data: true`): the shipped data is "
                "called 'sample'."
            )
        if self.prompt_style not in ("auto", "chat", "text"):
            raise ValueError(f"--prompt_style must be 'auto', 'chat' or 'text', got {self.prompt_style!r}.")
        if not self.datasets.strip():
            raise ValueError("--datasets needs at least one QA set, e.g. --datasets nq,hotpotqa.")


def build_sample_model(directory: str, hidden_size: int, num_layers: int) -> str:
    """Trains a small tokenizer on the sample data and saves a random tiny Qwen2 model with it (returns the path)."""
    import json

    from trl_search.offline_models import build_model, build_tokenizer

    texts = [DEFAULT_PROMPT_TEMPLATE]
    for path, key in ((SAMPLE_CORPUS_PATH, "contents"), (SAMPLE_QUESTIONS_PATH, "question")):
        with open(path, encoding="utf-8") as handle:
            texts += [json.loads(line)[key] for line in handle if line.strip()]
    tokenizer = build_tokenizer(texts, vocab_size=1000)
    model = build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main(script_args: SearchScriptArguments, training_args: SearchGRPOConfig, model_args: ModelConfig, callbacks=None):
    from accelerate import PartialState

    from trl_search.retrievers import load_retriever

    if script_args.sample_data:
        # One process builds the model, the others load what it saved: every rank starts from the same weights.
        directory = os.path.join(training_args.output_dir, "sample-initial-model")
        with PartialState().main_process_first():
            if not os.path.isfile(os.path.join(directory, "config.json")):
                build_sample_model(
                    directory, script_args.sample_model_hidden_size, script_args.sample_model_num_layers
                )
        model_args.model_name_or_path = directory
        script_args.datasets = "sample"
        if script_args.retriever == SearchScriptArguments.retriever:
            script_args.retriever = "sample"

    # tool calls: the search tool reaches the model through its chat template; the prompt only asks for its use
    template = TOOL_CALL_PROMPT_TEMPLATE if training_args.search_protocol == "tool_call" else DEFAULT_PROMPT_TEMPLATE
    if script_args.prompt_template_file:
        with open(script_args.prompt_template_file, encoding="utf-8") as handle:
            template = handle.read()
    training_args.prompt_template = template

    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    if script_args.prompt_style == "auto":  # Search-R1: the chat template whenever the tokenizer has one
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
        conversational = getattr(tokenizer, "chat_template", None) is not None
    else:
        conversational = script_args.prompt_style == "chat"
    if training_args.search_protocol == "tool_call" and not conversational:
        raise ValueError(
            "search_protocol tool_call needs chat prompts (the tool comes through the chat template): "
            "set --prompt_style chat or auto with a chat model."
        )
    dataset = make_training_mix(
        [name.strip() for name in script_args.datasets.split(",") if name.strip()],
        split=script_args.train_split,
        path=script_args.data_dir,
        template=template,
        conversational=conversational,
        seed=training_args.seed,
        limit_per_source=script_args.limit_per_source,
    )
    # Gathered retrieval: only the main process queries, so only it opens the index.
    main_only = training_args.gather_retrieval_queries and training_args.process_index != 0
    retriever = None if main_only else load_retriever(script_args.retriever)
    trainer = SearchGRPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        retriever=retriever,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.datasets)
    return trainer


def make_parser() -> TrlParser:
    return TrlParser((SearchScriptArguments, SearchGRPOConfig, ModelConfig))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
