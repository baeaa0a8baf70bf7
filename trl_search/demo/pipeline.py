"""The offline learning demo: a tiny model learns, on a CPU, to search an encyclopedia it has never seen, one- and
two-hop.

Stages of one seed, all offline and deterministic for the seed on a given machine:
1. generate the world (`trl_search.demo.world`), index its corpus with BM25, train a tokenizer on the training text and
   build a tiny Qwen2 model from scratch;
2. warm start with TRL's `SFTTrainer` on an imperfect teacher's trajectories, written by the teacher inside the real
   rollout; it stops once the model copies the answer from what was retrieved on validation questions (lands in
   neither split) at `sft_copy_threshold`, checked every `sft_check_every` steps, or at `sft_max_steps`;
3. evaluate on questions about held-out lands with `trl_search.evaluation.evaluate` (greedy, same rollout), per
   question type;
4. train with `SearchGRPOTrainer` and BM25, and controls with the same budget and seed: a retriever that finds
   nothing, and `mask_retrieved_tokens=False`; evaluate each;
5. write `results.json`, `results.md` and the plots (`trl_search.demo.report`).

`seeds > 1` runs the whole pipeline once per seed (in `workers` processes) and reports the mean, min and max.

Example:
    >>> from trl_search.demo import DemoConfig, run_demo
    >>> results = run_demo(DemoConfig.quick(output_dir="demo_output"))  # doctest: +SKIP
    >>> results["stages"]["rl_search"]["all"]["em"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from transformers import PrinterCallback, TrainerCallback

from ..offline_models import offline_environment
from ..retrievers.base import Retriever
from .world import (
    BEHAVIOURS,
    PROMPT_TEMPLATE,
    PROTOCOLS,
    QUESTION_TYPES,
    TeacherGenerator,
    TeacherSkill,
    World,
    make_plans,
    make_prompt,
    make_world,
)


# What differs between the protocols: a tool call and the chat template's tool messages are longer than tags, and the
# template's markup, JSON pieces and the names written bare (a tool-call answer starts with its name, no space before
# it) need a larger vocabulary for every invented word to stay one token. A field left None takes its protocol's value.
PROTOCOL_SETTINGS = {
    "tags": dict(
        vocab_size=800, max_tokens_per_turn=16, max_obs_length=64, max_completion_length=160, sft_copy_threshold=0.9
    ),
    # Copying emerges later behind the template's 216-token system prompt, and its rate then hovers in 0.8-0.9.
    "tool_call": dict(
        vocab_size=1200, max_tokens_per_turn=40, max_obs_length=64, max_completion_length=224, sft_copy_threshold=0.8
    ),
}

RL_RUNS = {  # run name -> (label, searches?, mask retrieved tokens?)
    "rl_search": ("RL with search (BM25)", True, True),
    "rl_no_retrieval": ("RL, retriever returns nothing", False, True),
    "rl_no_mask": ("RL with search, retrieved tokens not masked", True, False),
}


class EmptyRetriever(Retriever):
    """A retriever that finds nothing: the control that shows the task cannot be solved without search.

    Example:
        >>> EmptyRetriever().search(["capital of Vorlak"], k=3)
        [[]]
    """

    def search(self, queries, k):
        self._check_search_args(queries, k)
        return [[] for _ in queries]


@dataclass
class DemoConfig:
    """Every setting of the demo. `DemoConfig.quick()` is the README's first command; `DemoConfig.reduced()` the
    learning check of the test suite; `DemoConfig.toy()` a seconds-long run of every stage.

    Example:
        >>> DemoConfig.quick().rl_steps < DemoConfig().rl_steps
        True
    """

    output_dir: str = field(default="demo_output", metadata={"help": "Where results, plots and checkpoints go."})
    seed: int = field(default=0, metadata={"help": "Seed of the world, the model, the warm start and RL."})
    seeds: int = field(
        default=1,
        metadata={"help": "Run the whole pipeline for seeds seed, seed+1, ...; report the mean, min and max."},
    )
    workers: int = field(default=1, metadata={"help": "Processes running seeds side by side (one thread each)."})
    runs: tuple[str, ...] = field(default=tuple(RL_RUNS), metadata={"help": f"RL runs, among {list(RL_RUNS)}."})
    protocol: str = field(
        default="tags",
        metadata={
            "help": "Search protocol: `tags` (Search-R1's tags in a plain prompt) or `tool_call` (Qwen2.5 tool calls "
            "of a `search` tool through TRL's Qwen2.5 chat template, which the tiny tokenizer carries). Longer "
            "sequences: the vocabulary and token budgets below default per protocol (PROTOCOL_SETTINGS)."
        },
    )
    # world
    num_train_lands: int = field(default=350, metadata={"help": "Lands the training questions are about."})
    num_dev_lands: int = field(default=20, metadata={"help": "Lands of the validation questions (warm-start stop)."})
    num_test_lands: int = field(default=40, metadata={"help": "Lands of the held-out questions."})
    # tokenizer and model
    vocab_size: int | None = field(
        default=None,
        metadata={"help": "BPE vocabulary: every invented word becomes one token (default 800, tool_call 1200)."},
    )
    hidden_size: int = field(default=128, metadata={"help": "Width of the Qwen2 model."})
    intermediate_size: int = field(default=256, metadata={"help": "Width of the model's MLP."})
    num_layers: int = field(default=2, metadata={"help": "Layers of the Qwen2 model."})
    num_heads: int = field(default=8, metadata={"help": "Attention heads per layer."})
    # warm start
    sft_max_steps: int = field(default=1500, metadata={"help": "Cap on warm-start steps."})
    sft_min_steps: int = field(default=300, metadata={"help": "Warm-start steps before the first copy-rate check."})
    sft_check_every: int = field(default=50, metadata={"help": "Warm-start steps between copy-rate checks."})
    sft_copy_threshold: float | None = field(
        default=None,
        metadata={
            "help": "The warm start stops once the model answers this share of validation questions right when a "
            "perfect teacher decides its actions and the model writes every name (in its queries and its answer) "
            "(default 0.9, tool_call 0.8)."
        },
    )
    sft_batch_size: int = field(default=32, metadata={"help": "Demonstrations per warm-start step."})
    sft_learning_rate: float = field(default=6e-3, metadata={"help": "Warm-start learning rate (constant)."})
    sft_warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps of the warm start."})
    sft_observation_loss: bool = field(
        default=True,
        metadata={
            "help": "Train the warm start on the observation tokens too (language modelling of the passages, "
            "standing in for a real LLM's pretraining); RL never does."
        },
    )
    sft_reading_drills: bool = field(
        default=True,
        metadata={
            "help": "Add reading drills to the warm start: a perfect teacher's trajectories with loss on the "
            "observations and on the names in its queries and answer only (copying practice; no search decision, "
            "which query or whether to search again, is learnt from them)."
        },
    )
    teacher: TeacherSkill = field(default_factory=TeacherSkill, metadata={"help": "How good the teacher is."})
    # RL
    rl_steps: int = field(default=100, metadata={"help": "RL steps per run."})
    rl_prompts_per_step: int = field(default=8, metadata={"help": "Questions per RL step."})
    num_generations: int = field(default=8, metadata={"help": "Completions per question (the GRPO group)."})
    rl_learning_rate: float = field(default=5e-4, metadata={"help": "RL learning rate (constant)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature during RL."})
    # rollout
    max_turns: int = field(default=2, metadata={"help": "Searches per question (two-hop questions need two)."})
    retrieval_top_k: int = field(default=1, metadata={"help": "Passages per search."})
    max_tokens_per_turn: int | None = field(
        default=None, metadata={"help": "Tokens the policy may write per turn (default 16, tool_call 40)."}
    )
    max_obs_length: int | None = field(
        default=None, metadata={"help": "Tokens per observation, tags or template markup included (default 64)."}
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Tokens per completion, all turns (default 160, tool_call 224)."}
    )
    # evaluation
    eval_every: int = field(default=20, metadata={"help": "RL steps between held-out evaluations."})
    eval_questions_during_rl: int = field(default=40, metadata={"help": "Held-out questions per type, during RL."})
    eval_batch_size: int = field(default=128, metadata={"help": "Questions per evaluation batch."})
    progress: bool = field(default=True, metadata={"help": "Show a progress display (needs rich)."})
    # The model is tiny: one thread does its small matrix products about as fast as two, and is many times faster
    # when other processes share the cores (threads then spin waiting for each other). Fixed, for determinism.
    num_threads: int = field(default=1, metadata={"help": "Torch threads per process."})

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Unknown protocol {self.protocol!r}; choose one of {list(PROTOCOLS)}.")
        for name, value in PROTOCOL_SETTINGS[self.protocol].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        unknown = set(self.runs) - set(RL_RUNS)
        if unknown:
            raise ValueError(f"Unknown RL runs {sorted(unknown)}; choose among {list(RL_RUNS)}.")
        if isinstance(self.teacher, dict):  # from results.json
            self.teacher = TeacherSkill(**self.teacher)
        for name in ("seeds", "workers", "sft_max_steps", "sft_check_every", "rl_steps", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 < self.sft_copy_threshold <= 1.0:
            raise ValueError(f"sft_copy_threshold must lie in (0, 1], got {self.sft_copy_threshold}.")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: GRPO compares completions within a group.")
        if self.max_turns < 2:
            raise ValueError(f"max_turns must be >= 2 (two-hop questions need two searches), got {self.max_turns}.")
        if self.max_obs_length >= self.max_completion_length:
            raise ValueError("max_obs_length must be smaller than max_completion_length.")

    @property
    def rollout_limits(self) -> dict:
        """The rollout's turn and token limits, as the teacher's rollout, `evaluate` and `SearchGRPOConfig` all take
        them (the protocol goes beside them: the trainer's config calls it `search_protocol`)."""
        return dict(
            max_turns=self.max_turns,
            retrieval_top_k=self.retrieval_top_k,
            max_obs_length=self.max_obs_length,
            max_tokens_per_turn=self.max_tokens_per_turn,
            max_completion_length=self.max_completion_length,
        )

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """The README's first command (a few minutes on 2 CPU cores): a shorter RL run, and only the no-retrieval
        control."""
        settings = dict(rl_steps=40, eval_every=20, runs=("rl_search", "rl_no_retrieval"))
        return cls(**{**settings, **overrides})

    @classmethod
    def reduced(cls, **overrides) -> DemoConfig:
        """The learning check of the test suite: the quick mode's world and warm start, a shorter RL run with search
        only, no progress display."""
        settings = dict(rl_steps=20, eval_every=20, runs=("rl_search",), progress=False)
        return cls(**{**settings, **overrides})

    @classmethod
    def toy(cls, **overrides) -> DemoConfig:
        """A seconds-long run that exercises every stage (for tests); it learns nothing.

        Example:
            >>> DemoConfig.toy(protocol="tool_call").max_tokens_per_turn
            40
        """
        settings = dict(
            num_train_lands=6,
            num_dev_lands=2,
            num_test_lands=2,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            sft_max_steps=4,
            sft_min_steps=0,
            sft_check_every=2,
            sft_warmup_steps=0,
            sft_batch_size=8,
            rl_steps=2,
            rl_prompts_per_step=2,
            num_generations=2,
            eval_every=1,
            eval_questions_during_rl=4,
            eval_batch_size=16,
            progress=False,
        )
        if overrides.get("protocol", "tags") == "tags":  # tool calls keep their protocol's budgets: a call is longer
            settings.update(vocab_size=400, max_tokens_per_turn=6, max_obs_length=48, max_completion_length=96)
        return cls(**{**settings, **overrides})


# --- Building blocks -----------------------------------------------------------------------------------------------


def tokenizer_texts(world: World, retriever, protocol) -> list[str]:
    """The text a tokenizer may learn from: the corpus without the held-out and validation lands' passages, and the
    training questions with the teacher's turns around one observation each, rendered by the protocol (so that the
    tags and the observation format tokenise compactly). With the tool-call protocol (whose tokenizer renders the chat
    template; any will do, the text does not depend on its vocabulary) each one is the whole conversation as the chat
    template renders it, system prompt and tool schema included.

    Held-out names then split into pieces the model has met in training (a token seen only at test time would keep
    its random embedding, and could not be copied).
    """
    from .world import ATTRIBUTE

    unseen = {land.name for land in world.dev_lands + world.test_lands}
    passages = [row["contents"] for row in world.corpus if row["contents"].split("\n", 1)[0] not in unseen]
    texts = []
    for question in world.train_questions:
        if question["type"] == "one_hop":
            query = ATTRIBUTE[question["attribute"]].query(question["land"])
        else:
            query = ATTRIBUTE[question["bridge"]].query(question["bridge_value"])
        passages_found = retriever.search([query], k=1)[0]
        answer = question["golden_answers"][0]
        if protocol.name == "tool_call":
            call = {"name": "search", "arguments": {"query": query}}
            conversation = [
                *demo_prompt(question["question"], protocol.name),
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
                {"role": "tool", "name": "search", "content": protocol.render_content(passages_found)},
                {"role": "assistant", "content": answer},
            ]
            texts.append(protocol.tokenizer.apply_chat_template(conversation, tools=protocol.tools, tokenize=False))
            continue
        observation = protocol.render_observation(passages_found)
        texts.append(
            make_prompt(question["question"]) + f"<search> {query} </search>{observation}<answer> {answer} </answer>"
        )
    return passages + texts


def demo_prompt(question: str, protocol: str = "tags") -> str | list[dict]:
    """The prompt of a question: `make_prompt`'s text, as a user message for the chat template with tool calls.

    Example:
        >>> demo_prompt("Who founded Vor Lak?", "tool_call")
        [{'role': 'user', 'content': 'Question: Who founded Vor Lak?\\n'}]
    """
    prompt = make_prompt(question)
    return [{"role": "user", "content": prompt}] if protocol == "tool_call" else prompt


def tokenize_demo_prompts(questions: list[dict], tokenizer, protocol) -> list[list[int]]:
    """Token ids of the questions' prompts, as the trainer and the evaluation tokenise them (tool calls: through the
    chat template, showing the `search` tool)."""
    from ..data import tokenize_prompts

    prompts = [demo_prompt(question["question"], protocol.name) for question in questions]
    return tokenize_prompts(prompts, tokenizer, chat_template=protocol.chat_template, tools=protocol.tools)


def teacher_rollout(questions, plans, retriever, tokenizer, config: DemoConfig, answerer=None):
    """Runs the teacher (or, with `answerer`, the teacher's searches and the answerer's answers) through the real
    rollout, in `config.protocol`; returns the prompts' token ids and the rollout's output."""
    from ..rollout import SearchRollout

    rollout = SearchRollout(
        retriever,
        tokenizer,
        protocol=config.protocol,
        **config.rollout_limits,
    )
    prompt_ids = tokenize_demo_prompts(questions, tokenizer, rollout.protocol)
    generator = TeacherGenerator(tokenizer, plans, protocol=rollout.protocol, answerer=answerer)
    golds = [question["golden_answers"] for question in questions]
    return prompt_ids, rollout.run(prompt_ids, generator, golden_answers=golds)


def demonstration_rows(prompt_ids, samples, observation_loss: bool, tokenizer=None) -> list[dict]:
    """SFT rows from rollout samples: the prompt carries no loss; policy tokens (mask 1) do; injected tokens do only
    with `observation_loss`. With a `tokenizer`, the rows are reading drills: of each policy turn only what follows
    its first words carries loss (` Vor Lak </search>` after `<search> capital`, ` Zum Bro </answer>` after
    `<answer>`), which teaches copying names without teaching which action to take.

    Example:
        >>> from trl_search.rollout import SampleTrajectory
        >>> sample = SampleTrajectory([1, 2], completion_ids=[3, 4, 5, 6], env_mask=[1, 0, 1, 0])
        >>> demonstration_rows([[1, 2]], [sample], observation_loss=False)
        [{'input_ids': [1, 2, 3, 4, 5, 6], 'labels': [-100, -100, 3, -100, 5, -100]}]
    """
    from .world import forced_start

    rows = []
    for prompt, sample in zip(prompt_ids, samples):
        ids, mask = sample.completion_ids, sample.env_mask
        learnt = [bool(value) or observation_loss for value in mask]
        if tokenizer is not None:  # drills: unlearn each policy turn's start (the action), keep the names after it
            index = 0
            while index < len(ids):
                if not mask[index]:
                    index += 1
                    continue
                end = index
                while end < len(ids) and mask[end]:
                    end += 1
                start = forced_start(tokenizer.decode(ids[index:end]))
                skip = len(tokenizer(start, add_special_tokens=False)["input_ids"])
                learnt[index : index + skip] = [False] * skip
                index = end
        labels = [token if keep else -100 for token, keep in zip(ids, learnt)]
        rows.append({"input_ids": list(prompt) + list(ids), "labels": [-100] * len(prompt) + labels})
    return rows


def write_eval_data(questions: list[dict], directory: str) -> dict[str, str]:
    """Writes held-out questions where `load_qa_dataset(<type>, "test", directory)` finds them, one set per question
    type (`one_hop`, `two_hop`); returns the paths."""
    paths = {}
    for kind in QUESTION_TYPES:
        path = os.path.join(directory, kind, "test.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for row in questions:
                if row["type"] == kind:
                    keep = {key: row[key] for key in ("id", "question", "golden_answers")}
                    handle.write(json.dumps(keep, ensure_ascii=False) + "\n")
        paths[kind] = path
    return paths


@contextmanager
def quiet_logs():
    """Only errors from the libraries while the demo runs (its own display shows the progress); every level, warning
    filter and progress bar is restored afterwards, so a program that runs the demo keeps its own logging."""
    import logging
    import warnings

    import datasets
    import transformers
    from datasets.utils.logging import is_progress_bar_enabled as datasets_bars_enabled

    names = ("trl", "trl_search", "bm25s", "httpx")
    levels = {name: logging.getLogger(name).level for name in names}
    verbosity, datasets_verbosity = transformers.logging.get_verbosity(), datasets.logging.get_verbosity()
    bars, datasets_bars = transformers.utils.logging.is_progress_bar_enabled(), datasets_bars_enabled()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*deterministic.*", category=UserWarning)
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars between the demo's own
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            transformers.logging.set_verbosity(verbosity)
            datasets.logging.set_verbosity(datasets_verbosity)
            if bars:
                transformers.utils.logging.enable_progress_bar()
            if datasets_bars:
                datasets.enable_progress_bars()


@contextmanager
def deterministic_torch(num_threads: int):
    """Fixed threads and deterministic algorithms while the demo runs (restored afterwards): the same seed on the same
    machine then gives the same results."""
    import torch
    import torch.utils.deterministic as deterministic_settings

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = deterministic_settings.fill_uninitialized_memory
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN; TRL's chunked log-prob buffers then cost a second a
    # step on a CPU. They are always written before being read, so the fill buys nothing here.
    deterministic_settings.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        deterministic_settings.fill_uninitialized_memory = fill


# --- The stages ----------------------------------------------------------------------------------------------------


class DemoPipeline:
    """Runs the demo's stages for one seed; each stage is a method, so that tests and notebooks can run them one by
    one (inside `deterministic_torch`, as `run` does).

    Example:
        >>> pipeline = DemoPipeline(DemoConfig.toy(output_dir="/tmp/demo"))  # doctest: +SKIP
        >>> results = pipeline.run()  # doctest: +SKIP
    """

    def __init__(self, config: DemoConfig, display=None):
        from .report import Display

        if config.seeds != 1:
            raise ValueError("DemoPipeline runs one seed; use run_demo for several.")
        offline_environment()
        self.config = config
        self.display = display or Display(enabled=config.progress)
        self.results: dict = {"config": _jsonable(asdict(config)), "stages": {}, "curves": {}, "timings": {}}
        os.makedirs(config.output_dir, exist_ok=True)

    # stage 1
    def build(self) -> None:
        from ..offline_models import build_chat_tokenizer, build_model, build_tokenizer
        from ..protocols import get_protocol
        from ..retrievers import BM25Retriever

        config = self.config
        self.world = make_world(config.seed, config.num_train_lands, config.num_dev_lands, config.num_test_lands)
        self.retriever = BM25Retriever.build(self.world.corpus, backend="numpy")  # small corpus: no numba compile
        self.data_dir = os.path.join(config.output_dir, "data")
        write_eval_data(self.world.test_questions, self.data_dir)
        if config.protocol == "tool_call":
            # The texts are rendered by the chat template, which any tokenizer of the family carries: a throwaway one
            # renders them, then the demo's tokenizer learns from them.
            renderer = get_protocol("tool_call", tokenizer=build_chat_tokenizer([], "qwen2_5", vocab_size=300))
            texts = tokenizer_texts(self.world, self.retriever, renderer)
            self.tokenizer = build_chat_tokenizer(texts, "qwen2_5", vocab_size=config.vocab_size)
            self.protocol = get_protocol("tool_call", tokenizer=self.tokenizer)
        else:
            self.protocol = get_protocol("tags")
            texts = tokenizer_texts(self.world, self.retriever, self.protocol)
            self.tokenizer = build_tokenizer(texts, vocab_size=config.vocab_size)
        self.model = build_model(
            self.tokenizer,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            max_position_embeddings=512,
            seed=config.seed,
        )
        self.results["world"] = {
            "train_lands": len(self.world.train_lands),
            "dev_lands": len(self.world.dev_lands),
            "test_lands": len(self.world.test_lands),
            "train_questions": len(self.world.train_questions),
            "dev_questions": len(self.world.dev_questions),
            "test_questions": {
                kind: sum(row["type"] == kind for row in self.world.test_questions) for kind in QUESTION_TYPES
            },
            "corpus_passages": len(self.world.corpus),
        }
        self.results["model"] = {
            "parameters": sum(parameter.numel() for parameter in self.model.parameters()),
            "vocab_size": len(self.tokenizer),
        }
        if config.protocol != "tags":  # the tags run's results stay as they were
            self.results["model"]["prompt_tokens"] = len(
                tokenize_demo_prompts(self.world.test_questions[:1], self.tokenizer, self.protocol)[0]
            )

    def demonstrations(self) -> list[dict]:
        """The warm start's rows: the imperfect teacher's trajectories on the training questions, and (with
        `sft_reading_drills`) a perfect teacher's trajectories in which only the observations and the names the
        policy writes carry loss (see `demonstration_rows`): practice at copying names, standing in for a pretrained
        LLM's reading skill, that teaches no search decision."""
        config = self.config
        questions = self.world.train_questions
        plans = make_plans(questions, config.teacher, self.world.answer_pool, config.seed)
        prompt_ids, output = teacher_rollout(questions, plans, self.retriever, self.tokenizer, config)
        rows = demonstration_rows(prompt_ids, output.samples, config.sft_observation_loss)
        self.results["teacher"] = {
            kind: {
                behaviour: sum(plan.behaviour == behaviour for plan in of_kind) / len(of_kind)
                for behaviour in BEHAVIOURS[kind]
            }
            for kind in QUESTION_TYPES
            for of_kind in [[plan for plan in plans if plan.question["type"] == kind]]
        }
        if config.sft_reading_drills:
            perfect = make_plans(questions, TeacherSkill.perfect(), self.world.answer_pool, config.seed)
            prompt_ids, output = teacher_rollout(questions, perfect, self.retriever, self.tokenizer, config)
            rows += demonstration_rows(prompt_ids, output.samples, config.sft_observation_loss, self.tokenizer)
        return rows

    def copy_rate(self, model) -> dict:
        """Validation probe: a perfect teacher decides every action, the model writes every name (greedy): the land
        or value in each query and the answer. Returns the share answered right, over all validation questions and
        per type."""
        from ..generation import TransformersGenerator
        from ..rewards import exact_match_reward

        questions = self.world.dev_questions
        plans = make_plans(questions, TeacherSkill.perfect(), self.world.answer_pool, self.config.seed)
        was_training = model.training
        model.eval()
        answerer = TransformersGenerator(model, self.tokenizer, _greedy(model))
        _, output = teacher_rollout(questions, plans, self.retriever, self.tokenizer, self.config, answerer)
        model.train(was_training)
        texts = [self.tokenizer.decode(sample.completion_ids, skip_special_tokens=True) for sample in output.samples]
        golds = [question["golden_answers"] for question in questions]
        if self.config.protocol == "tags":
            scores = exact_match_reward(texts, golds)
        else:  # a tool-call answer is the last assistant message, as the rollout read it (and the trainer scores it)
            scores = exact_match_reward(texts, golds, [sample.predicted_answer for sample in output.samples])
        rates = {"all": sum(scores) / len(scores)}
        for kind in QUESTION_TYPES:
            of_kind = [score for score, question in zip(scores, questions) if question["type"] == kind]
            rates[kind] = sum(of_kind) / len(of_kind)
        return rates

    # stage 2
    def warm_start(self) -> None:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        config = self.config
        rows = self.demonstrations()
        sft_dir = os.path.join(config.output_dir, "sft")
        args = SFTConfig(
            output_dir=sft_dir,
            max_steps=config.sft_max_steps,
            per_device_train_batch_size=config.sft_batch_size,
            learning_rate=config.sft_learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=config.sft_warmup_steps,
            weight_decay=0.0,
            max_length=None,
            logging_steps=10,
            dataloader_num_workers=0,
            **_cpu_training(config.seed),
        )
        probe = _CopyProbe(self, config.sft_check_every, config.sft_min_steps, config.sft_copy_threshold)
        trainer = SFTTrainer(
            model=self.model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=self.tokenizer,
            callbacks=[self.display.trainer_callback("warm start (SFT)", copy_probe=probe), probe],
        )
        trainer.remove_callback(PrinterCallback)  # the progress display shows the loss
        start = time.perf_counter()
        trainer.train()
        self.results["timings"]["warm_start"] = time.perf_counter() - start
        self.results["warm_start"] = {
            "steps": trainer.state.global_step,
            "stopped_by": "copy rate" if probe.reached else "step cap",
            "copy_rate": probe.points,
            "loss": [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry],
        }
        self.sft_dir = sft_dir
        self.model.save_pretrained(sft_dir)
        self.tokenizer.save_pretrained(sft_dir)

    def evaluate(self, model, retriever=None, limit=None, output_dir=None) -> dict:
        """Greedy evaluation on held-out questions with the package's harness; returns metrics per question type and
        over all questions (`"all"`)."""
        from ..evaluation import evaluate

        config = self.config
        was_training = model.training
        results = evaluate(
            model,
            retriever if retriever is not None else self.retriever,
            list(QUESTION_TYPES),
            tokenizer=self.tokenizer,
            data_dir=self.data_dir,
            split="test",
            limit=limit,
            output_dir=output_dir,
            batch_size=config.eval_batch_size,
            **config.rollout_limits,
            protocol=config.protocol,
            prompt_template=PROMPT_TEMPLATE,
            conversational=config.protocol == "tool_call",
            progress=False,
        )
        model.train(was_training)
        return _by_type(results["datasets"])

    # stage 3
    def evaluate_warm_start(self) -> None:
        stage_dir = os.path.join(self.config.output_dir, "eval", "warm_start")
        with self.display.status("evaluating the warm start"):
            self.results["stages"]["warm_start"] = self.evaluate(self.model, output_dir=stage_dir)
            self.results["stages"]["warm_start_no_retrieval"] = self.evaluate(
                self.model, EmptyRetriever(), output_dir=stage_dir + "_no_retrieval"
            )

    # stage 4
    def reinforce(self, run: str) -> dict:
        """One RL run from the warm start; returns its final metrics and its curves."""
        from datasets import Dataset
        from transformers import AutoModelForCausalLM

        from ..search_grpo_config import SearchGRPOConfig
        from ..search_grpo_trainer import SearchGRPOTrainer

        config = self.config
        label, searches, masked = RL_RUNS[run]
        retriever = self.retriever if searches else EmptyRetriever()
        model = AutoModelForCausalLM.from_pretrained(self.sft_dir)
        run_dir = os.path.join(config.output_dir, "rl", run)
        dataset = Dataset.from_list(
            [
                {"prompt": demo_prompt(row["question"], config.protocol), "golden_answers": row["golden_answers"]}
                for row in self.world.train_questions
            ]
        )
        args = SearchGRPOConfig(
            output_dir=run_dir,
            max_steps=config.rl_steps,
            per_device_train_batch_size=config.rl_prompts_per_step * config.num_generations,
            num_generations=config.num_generations,
            learning_rate=config.rl_learning_rate,
            lr_scheduler_type="constant",
            beta=0.0,
            temperature=config.temperature,
            search_protocol=config.protocol,
            **config.rollout_limits,
            mask_retrieved_tokens=masked,
            logging_steps=1,
            **_cpu_training(config.seed),
        )
        em_curve = _EvalCurve(self, retriever, config.eval_every, config.eval_questions_during_rl)
        trainer = SearchGRPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=self.tokenizer,
            retriever=retriever,
            callbacks=[self.display.trainer_callback(label, em_curve=em_curve), em_curve],
        )
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        final = self.evaluate(model, retriever, output_dir=os.path.join(config.output_dir, "eval", run))
        history = trainer.state.log_history

        def logged(key):
            return [(entry["step"], entry[key]) for entry in history if key in entry]

        curves = {
            "reward": logged("reward"),
            "searches_per_sample": logged("search/searches_per_sample"),
            "answer_retrieved_ratio": logged("search/answer_retrieved_ratio"),
            "heldout": em_curve.points,
        }
        return {"final": final, "seconds": seconds, "curves": curves}

    def run(self) -> dict:
        """Runs every stage and writes the outputs; returns the results (also in `results.json`)."""
        from .report import results_table, write_report

        config = self.config
        start, load_start = time.perf_counter(), os.getloadavg()[0]
        with quiet_logs(), deterministic_torch(config.num_threads):
            with self.display.status("building the world, the tokenizer and the model"):
                self.build()
            self.warm_start()
            self.evaluate_warm_start()
            for run in config.runs:
                out = self.reinforce(run)
                self.results["stages"][run] = out["final"]
                self.results["curves"][run] = out["curves"]
                self.results["timings"][run] = out["seconds"]
                self.display.stage_done(RL_RUNS[run][0], out["final"])
        self.results["timings"]["total"] = time.perf_counter() - start
        self.results["machine"] = _machine(load_start)
        self.results["table"] = results_table(self.results)
        write_report(self.results, config.output_dir)
        return self.results


def _cpu_training(seed: int) -> dict:
    """Training arguments both the warm start and RL share: CPU, fp32, seeded, no checkpoints, no reporting."""
    return dict(
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        gradient_checkpointing=False,  # TRL turns it on by default; a tiny model has no memory to save
    )


class _CopyProbe(TrainerCallback):
    """Stops the warm start once the validation copy rate reaches `threshold` (checked every `every` steps)."""

    def __init__(self, pipeline: DemoPipeline, every: int, min_steps: int, threshold: float):
        self.pipeline, self.every, self.min_steps, self.threshold = pipeline, every, min_steps, threshold
        self.points: list[tuple[int, float, float, float]] = []  # (step, all, one-hop, two-hop)
        self.reached = False

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step < self.min_steps and state.global_step != state.max_steps:
            return  # copying never emerges this early: checking would only cost time
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        rates = self.pipeline.copy_rate(model)
        self.points.append((state.global_step, rates["all"], rates["one_hop"], rates["two_hop"]))
        if state.global_step >= self.min_steps and rates["all"] >= self.threshold:
            self.reached = True
            control.should_training_stop = True


class _EvalCurve(TrainerCallback):
    """Evaluates held-out EM and searches per question type every `every` RL steps (greedy, `limit` per type)."""

    def __init__(self, pipeline: DemoPipeline, retriever, every: int, limit: int):
        self.pipeline, self.retriever, self.every, self.limit = pipeline, retriever, every, limit
        self.points: list[dict] = []

    def _measure(self, step, model):
        metrics = self.pipeline.evaluate(model, self.retriever, limit=self.limit)
        point = {"step": step}
        for kind, values in metrics.items():
            point[f"em_{kind}"] = values["em"]
            point[f"searches_{kind}"] = values["searches_per_sample"]
        self.points.append(point)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._measure(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._measure(state.global_step, model)


def _machine(load_start: float) -> dict:
    """What the wall times were measured on: CPUs, and the 1-minute load average at the start and the end (a load
    above the CPU count means other processes shared them)."""
    import platform

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
    }


def _greedy(model):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.pad_token_id,
    )


_SUMMARY_KEYS = ("em", "f1", "searches_per_sample", "answer_retrieved_ratio", "answered_ratio", "invalid_action_rate")


def _by_type(datasets: dict) -> dict:
    """Metrics per question type, and over all questions weighted by their number."""
    out = {kind: {key: datasets[kind].get(key) for key in _SUMMARY_KEYS} for kind in QUESTION_TYPES}
    counts = {kind: datasets[kind]["num_questions"] for kind in QUESTION_TYPES}
    total = sum(counts.values())
    out["all"] = {}
    for key in _SUMMARY_KEYS:
        values = [(out[kind][key], counts[kind]) for kind in QUESTION_TYPES if out[kind][key] is not None]
        out["all"][key] = sum(value * count for value, count in values) / total if values else None
    for kind in QUESTION_TYPES:
        out[kind]["num_questions"] = counts[kind]
    return out


def _jsonable(value):
    return json.loads(
        json.dumps(value, default=lambda item: asdict(item) if hasattr(item, "__dataclass_fields__") else str(item))
    )


# --- Several seeds -------------------------------------------------------------------------------------------------


def _run_one_seed(config: DemoConfig) -> dict:
    return DemoPipeline(config).run()


@contextmanager
def _exit_on_sigterm():
    """SIGTERM (a `kill`, a job scheduler) exits through Python, so that the worker pool is terminated with its
    parent instead of running on as orphans; the previous handler is restored afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(config: DemoConfig, command: str | None = None, display=None) -> dict:
    """Runs the whole demo (see the module docstring) and returns its results. With `config.seeds > 1`, every seed
    runs in `<output_dir>/seed<n>` and the top-level results hold the mean, min and max over seeds.

    Example:
        >>> results = run_demo(DemoConfig.toy(output_dir="/tmp/demo-toy"))  # doctest: +SKIP
        >>> sorted(results["stages"])  # doctest: +SKIP
        ['rl_no_mask', 'rl_no_retrieval', 'rl_search', 'warm_start', 'warm_start_no_retrieval']
    """
    from .report import Display, aggregate_seeds, write_report

    if config.seeds == 1:
        pipeline = DemoPipeline(config, display)
        pipeline.results["command"] = command
        return pipeline.run()
    import multiprocessing

    display = display or Display(enabled=config.progress)
    seeds = [config.seed + offset for offset in range(config.seeds)]
    configs = [
        replace(
            config,
            seed=seed,
            seeds=1,
            workers=1,
            progress=False,
            output_dir=os.path.join(config.output_dir, f"seed{seed}"),
        )
        for seed in seeds
    ]
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    per_seed = {}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch thread pools
    with display.status(f"running seeds {seeds[0]}..{seeds[-1]} in {config.workers} process(es)"), _exit_on_sigterm():
        with context.Pool(min(config.workers, len(seeds)), maxtasksperchild=1) as pool:  # exit terminates the workers
            for seed_config, result in zip(configs, pool.imap(_run_one_seed, configs)):
                per_seed[seed_config.seed] = result
                display.seed_done(seed_config.seed, result)
    results = aggregate_seeds(config, per_seed, time.perf_counter() - start)
    results["command"] = command
    results["machine"] = _machine(load_start)
    write_report(results, config.output_dir)
    return results
