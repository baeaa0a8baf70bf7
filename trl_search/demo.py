"""The offline learning demo: a tiny model learns, on a CPU, to search an encyclopedia it has never seen.

Stages, all offline and seeded:
1. generate the world (`trl_search.demo_task`), index its corpus with BM25, train a tokenizer on the training text and
   build a tiny Qwen2 model from scratch;
2. warm start with TRL's `SFTTrainer` on an imperfect teacher's trajectories (observation tokens carry no loss);
3. evaluate on questions about held-out lands with `trl_search.evaluation.evaluate` (greedy, same rollout);
4. train with `SearchGRPOTrainer` and BM25, and two controls with the same budget and seeds: a retriever that finds
   nothing, and `mask_retrieved_tokens=False`; evaluate each;
5. write `results.json`, `results.md` and the plots (`trl_search.demo_report`).

Example:
    >>> from trl_search.demo import DemoConfig, run_demo
    >>> results = run_demo(DemoConfig.quick(output_dir="demo_output"))  # doctest: +SKIP
    >>> results["stages"]["rl_search"]["em"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field

from transformers import PrinterCallback, TrainerCallback

from .demo_task import PROMPT_TEMPLATE, TeacherSkill, World, demonstration, make_prompt, make_world
from .retrievers.base import Retriever


DATASET_NAME = "world"  # held-out questions are written to <output_dir>/data/world/test.jsonl for the harness
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
    """Every setting of the demo. `DemoConfig.quick()` is the README's 3-minute version; `DemoConfig.toy()` is for
    tests.

    Example:
        >>> DemoConfig.quick().rl_steps < DemoConfig().rl_steps
        True
    """

    output_dir: str = "demo_output"
    seed: int = 0
    seeds: int = 1  # RL seeds per run (seed, seed + 1, ...); the warm start is shared
    runs: tuple[str, ...] = tuple(RL_RUNS)
    # world
    num_train_lands: int = 150
    num_test_lands: int = 40
    # tokenizer and model
    vocab_size: int = 800  # every invented word becomes one token, every name two
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    # warm start
    sft_steps: int = 2000  # copying names (what reading a passage needs) emerges after ~500 steps from scratch
    sft_demos_per_question: int = 1
    sft_batch_size: int = 16
    sft_learning_rate: float = 3e-3
    sft_observation_loss: bool = True
    teacher: TeacherSkill = field(default_factory=TeacherSkill)
    # RL
    rl_steps: int = 150
    rl_prompts_per_step: int = 4
    num_generations: int = 8
    rl_learning_rate: float = 2e-4
    temperature: float = 1.0
    # rollout
    max_turns: int = 1
    top_k: int = 1  # one short passage per search keeps sequences short enough for a CPU
    max_tokens_per_turn: int = 16
    max_obs_length: int = 80
    max_completion_length: int = 128
    # evaluation
    eval_every: int = 10
    eval_questions_during_rl: int = 80
    eval_batch_size: int = 80
    progress: bool = True
    # The model is tiny: one thread does its small matrix products about as fast as two, and is many times faster
    # when other processes share the cores (threads then spin waiting for each other).
    num_threads: int | None = 1

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """A shorter run for a first try (about 3 minutes on 2 CPU cores): a shorter warm start and RL, and only the
        no-retrieval control."""
        settings = dict(
            sft_steps=800,
            rl_steps=40,
            eval_every=10,
            eval_questions_during_rl=40,
            runs=("rl_search", "rl_no_retrieval"),
        )
        return cls(**{**settings, **overrides})

    @classmethod
    def toy(cls, **overrides) -> DemoConfig:
        """A seconds-long run that exercises every stage (for tests); it learns nothing."""
        settings = dict(
            num_train_lands=6,
            num_test_lands=2,
            vocab_size=400,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            sft_steps=2,
            sft_batch_size=8,
            rl_steps=2,
            rl_prompts_per_step=2,
            num_generations=2,
            eval_every=1,
            eval_questions_during_rl=4,
            eval_batch_size=16,
            max_tokens_per_turn=6,
            max_obs_length=48,
            max_completion_length=64,
            progress=False,
        )
        return cls(**{**settings, **overrides})


# --- Building blocks -----------------------------------------------------------------------------------------------


def training_texts(world: World, demonstrations=()) -> list[str]:
    """The text a tokenizer may learn from: the corpus without the held-out lands' passages, the training prompts and
    the teacher's demonstrations (so that the tags and the observation format tokenise compactly).

    Held-out names then split into pieces that the model has met in training (a token seen only at test time would
    keep its random embedding, and could not be copied).
    """
    held_out = {f'"{land.name}"' for land in world.test_lands}
    passages = [row["contents"] for row in world.corpus if row["contents"].split("\n", 1)[0] not in held_out]
    demos = [
        make_prompt(demo.question["question"]) + "".join(text for _, text in demo.segments) for demo in demonstrations
    ]
    return passages + [make_prompt(row["question"]) for row in world.train_questions] + demos


def tokenize_demonstration(demo, tokenizer, protocol, max_obs_length: int, observation_loss: bool = False) -> dict:
    """Tokenises a teacher trajectory exactly as the rollout would build it, with labels on the policy text.

    The prompt gets label -100. The observations (injected text at RL time) get label -100 too unless
    `observation_loss`: then the model also learns to read the passages as a language model would, the way a
    pretrained LLM has read its corpus, which teaches a tiny model to copy names far sooner. The final EOS is learnt,
    so that the model also stops on its own outside the rollout.
    """
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_ids = tokenizer(make_prompt(demo.question["question"]))["input_ids"]
    input_ids, labels = list(prompt_ids), [-100] * len(prompt_ids)
    for kind, text in demo.segments:
        if kind == "observation":  # the rollout encodes the tags and the body separately, and cuts the body
            open_ids, close_ids = encode(protocol.observation_open), encode(protocol.observation_close)
            body_ids = encode(text)[: max_obs_length - len(open_ids) - len(close_ids)]
            ids = open_ids + body_ids + close_ids
            input_ids += ids
            labels += ids if observation_loss else [-100] * len(ids)
        else:
            ids = encode(text)
            input_ids += ids
            labels += ids
    input_ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return {"input_ids": input_ids, "labels": labels}


def write_eval_data(world: World, directory: str) -> str:
    """Writes the held-out questions where `load_qa_dataset(DATASET_NAME, "test", directory)` finds them."""
    path = os.path.join(directory, DATASET_NAME, "test.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in world.test_questions:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _quiet_logs():
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in ("trl", "trl_search", "bm25s", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _offline_environment():
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }.items():
        os.environ.setdefault(key, value)


# --- The stages ----------------------------------------------------------------------------------------------------


class DemoPipeline:
    """Runs the demo's stages; each stage is a method, so that tests and notebooks can run them one by one.

    Example:
        >>> pipeline = DemoPipeline(DemoConfig.toy(output_dir="/tmp/demo"))  # doctest: +SKIP
        >>> results = pipeline.run()  # doctest: +SKIP
    """

    def __init__(self, config: DemoConfig, display=None):
        from .demo_report import Display

        _offline_environment()
        _quiet_logs()
        unknown = set(config.runs) - set(RL_RUNS)
        if unknown:
            raise ValueError(f"Unknown RL runs {sorted(unknown)}; choose among {list(RL_RUNS)}.")
        if config.num_threads:
            import torch

            torch.set_num_threads(config.num_threads)
        self.config = config
        self.display = display or Display(enabled=config.progress)
        self.results: dict = {"config": _jsonable(asdict(config)), "stages": {}, "curves": {}, "timings": {}}
        os.makedirs(config.output_dir, exist_ok=True)

    # stage 1
    def build(self) -> None:
        from .offline_models import build_model, build_tokenizer
        from .protocols import get_protocol
        from .retrievers import BM25Retriever

        config = self.config
        self.world = make_world(config.seed, config.num_train_lands, config.num_test_lands)
        self.protocol = get_protocol("tags")
        self.retriever = BM25Retriever.build(self.world.corpus, backend="numpy")  # small corpus: no numba compile
        self.data_dir = os.path.join(config.output_dir, "data")
        write_eval_data(self.world, self.data_dir)
        rng = random.Random(config.seed)
        self.demonstrations = [
            demonstration(
                question,
                self.retriever,
                self.protocol.render_passages,
                config.teacher,
                self.world.answer_pool,
                rng,
                top_k=config.top_k,
            )
            for _ in range(config.sft_demos_per_question)
            for question in self.world.train_questions
        ]
        self.tokenizer = build_tokenizer(training_texts(self.world, self.demonstrations), vocab_size=config.vocab_size)
        self.model = build_model(
            self.tokenizer,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            max_position_embeddings=1024,
            seed=config.seed,
        )
        self.results["world"] = {
            "train_lands": len(self.world.train_lands),
            "test_lands": len(self.world.test_lands),
            "train_questions": len(self.world.train_questions),
            "test_questions": len(self.world.test_questions),
            "corpus_passages": len(self.world.corpus),
        }
        self.results["model"] = {
            "parameters": sum(parameter.numel() for parameter in self.model.parameters()),
            "vocab_size": len(self.tokenizer),
        }

    # stage 2
    def warm_start(self) -> None:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        config = self.config
        demos = self.demonstrations
        kinds = [demo.kind for demo in demos]
        self.results["teacher"] = {kind: kinds.count(kind) / len(kinds) for kind in ("good", "lazy", "guess")}
        rows = [
            tokenize_demonstration(
                demo, self.tokenizer, self.protocol, config.max_obs_length, config.sft_observation_loss
            )
            for demo in demos
        ]
        sft_dir = os.path.join(config.output_dir, "sft")
        args = SFTConfig(
            output_dir=sft_dir,
            max_steps=config.sft_steps,
            per_device_train_batch_size=config.sft_batch_size,
            learning_rate=config.sft_learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=0.05,
            weight_decay=0.0,
            max_length=512,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
            seed=config.seed,
            dataloader_num_workers=0,
            gradient_checkpointing=False,  # TRL turns it on by default; a tiny model has no memory to save
        )
        trainer = SFTTrainer(
            model=self.model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=self.tokenizer,
            callbacks=[self.display.trainer_callback("warm start (SFT)")],
        )
        trainer.remove_callback(PrinterCallback)  # the progress display shows the loss
        start = time.perf_counter()
        trainer.train()
        self.results["timings"]["warm_start"] = time.perf_counter() - start
        self.results["curves"]["sft_loss"] = [
            (entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry
        ]
        self.sft_dir = sft_dir
        self.model.save_pretrained(sft_dir)
        self.tokenizer.save_pretrained(sft_dir)

    def evaluate(self, model, retriever=None, limit=None, output_dir=None, label=None) -> dict:
        """Greedy evaluation on held-out questions with the package's harness; returns its metrics."""
        from .evaluation import evaluate

        config = self.config
        was_training = model.training
        results = evaluate(
            model,
            retriever if retriever is not None else self.retriever,
            DATASET_NAME,
            tokenizer=self.tokenizer,
            data_dir=self.data_dir,
            split="test",
            limit=limit,
            output_dir=output_dir,
            batch_size=config.eval_batch_size,
            max_turns=config.max_turns,
            top_k=config.top_k,
            max_obs_length=config.max_obs_length,
            max_tokens_per_turn=config.max_tokens_per_turn,
            max_completion_length=config.max_completion_length,
            prompt_template=PROMPT_TEMPLATE,
            conversational=False,
            label=label,
            progress=False,
        )
        model.train(was_training)
        return results["average"]

    # stage 3
    def evaluate_warm_start(self) -> None:
        stage_dir = os.path.join(self.config.output_dir, "eval", "warm_start")
        with self.display.status("evaluating the warm start"):
            self.results["stages"]["warm_start"] = _summary(self.evaluate(self.model, output_dir=stage_dir))
            self.results["stages"]["warm_start_no_retrieval"] = _summary(
                self.evaluate(self.model, EmptyRetriever(), output_dir=stage_dir + "_no_retrieval")
            )

    # stages 4-5
    def reinforce(self, run: str, seed: int) -> dict:
        """One RL run from the warm start; returns its final metrics and its curves."""
        from datasets import Dataset
        from transformers import AutoModelForCausalLM

        from .search_grpo_config import SearchGRPOConfig
        from .search_grpo_trainer import SearchGRPOTrainer

        config = self.config
        label, searches, masked = RL_RUNS[run]
        retriever = self.retriever if searches else EmptyRetriever()
        model = AutoModelForCausalLM.from_pretrained(self.sft_dir)
        run_dir = os.path.join(config.output_dir, "rl", f"{run}_seed{seed}")
        dataset = Dataset.from_list(
            [
                {"prompt": make_prompt(row["question"]), "golden_answers": row["golden_answers"]}
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
            max_turns=config.max_turns,
            top_k=config.top_k,
            max_tokens_per_turn=config.max_tokens_per_turn,
            max_obs_length=config.max_obs_length,
            max_completion_length=config.max_completion_length,
            mask_retrieved_tokens=masked,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
            seed=seed,
            data_seed=seed,
            gradient_checkpointing=False,
        )
        em_curve = _EvalCurve(self, retriever, config.eval_every, config.eval_questions_during_rl)
        trainer = SearchGRPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=self.tokenizer,
            retriever=retriever,
            callbacks=[self.display.trainer_callback(f"{label} (seed {seed})", em_curve), em_curve],
        )
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        final = self.evaluate(
            model, retriever, output_dir=os.path.join(config.output_dir, "eval", f"{run}_seed{seed}")
        )
        history = trainer.state.log_history
        return {
            "final": _summary(final),
            "seconds": seconds,
            "reward": [(entry["step"], entry["reward"]) for entry in history if "reward" in entry],
            "searches_per_sample": [
                (entry["step"], entry["search/searches_per_sample"])
                for entry in history
                if "search/searches_per_sample" in entry
            ],
            "answer_retrieved": [
                (entry["step"], entry["search/answer_in_retrieval_ratio"])
                for entry in history
                if "search/answer_in_retrieval_ratio" in entry
            ],
            "heldout_em": em_curve.points,
        }

    def run(self) -> dict:
        """Runs every stage and writes the outputs; returns the results (also in `results.json`)."""
        from .demo_report import results_table, write_report

        config = self.config
        start = time.perf_counter()
        with self.display.status("building the world, the tokenizer and the model"):
            self.build()
        self.warm_start()
        self.evaluate_warm_start()
        seeds = [config.seed + offset for offset in range(config.seeds)]
        for run in config.runs:
            per_seed = {seed: self.reinforce(run, seed) for seed in seeds}
            self.results["curves"][run] = {str(seed): _curves(out) for seed, out in per_seed.items()}
            self.results["stages"][run] = _mean_over_seeds([out["final"] for out in per_seed.values()])
            self.results["timings"][run] = sum(out["seconds"] for out in per_seed.values())
            self.display.stage_done(RL_RUNS[run][0], self.results["stages"][run])
        self.results["timings"]["total"] = time.perf_counter() - start
        self.results["table"] = results_table(self.results)
        write_report(self.results, config.output_dir)
        return self.results


class _EvalCurve(TrainerCallback):
    """A trainer callback that evaluates held-out EM every `every` steps (greedy, on `limit` questions)."""

    def __init__(self, pipeline: DemoPipeline, retriever, every: int, limit: int):
        self.pipeline, self.retriever, self.every, self.limit = pipeline, retriever, every, limit
        self.points: list[tuple[int, float, float]] = []  # (step, em, searches per question)

    def _measure(self, step, model):
        metrics = self.pipeline.evaluate(model, self.retriever, limit=self.limit)
        self.points.append((step, metrics["em"], metrics["searches_per_question"]))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._measure(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._measure(state.global_step, model)


def _summary(metrics: dict) -> dict:
    keys = ("em", "f1", "searches_per_question", "answer_retrieved", "answered", "invalid_action_rate")
    return {key: metrics.get(key) for key in keys}


def _mean_over_seeds(finals: list[dict]) -> dict:
    import statistics

    out = {}
    for key in finals[0]:
        values = [final[key] for final in finals if final[key] is not None]
        out[key] = statistics.fmean(values) if values else None
        if len(values) > 1:
            out[f"{key}_std"] = statistics.stdev(values)
    out["per_seed"] = finals
    return out


def _curves(out: dict) -> dict:
    return {key: out[key] for key in ("reward", "searches_per_sample", "answer_retrieved", "heldout_em")}


def _jsonable(value):
    return json.loads(
        json.dumps(value, default=lambda item: asdict(item) if hasattr(item, "__dataclass_fields__") else str(item))
    )


def run_demo(config: DemoConfig) -> dict:
    """Runs the whole demo (see the module docstring) and returns its results.

    Example:
        >>> results = run_demo(DemoConfig.toy(output_dir="/tmp/demo-toy"))  # doctest: +SKIP
        >>> sorted(results["stages"])  # doctest: +SKIP
        ['rl_no_mask', 'rl_no_retrieval', 'rl_search', 'warm_start', 'warm_start_no_retrieval']
    """
    return DemoPipeline(config).run()
