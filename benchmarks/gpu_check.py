"""GPU check helpers, driven by benchmarks/gpu_check.sh: install the wheels brought along, build a random model of
Qwen2.5-0.5B's shape, run a few training steps (ours through examples/train_nq.py, or stock GRPOTrainer generating as
many tokens), and print the summary table.

    python benchmarks/gpu_check.py install --wheels benchmarks/wheels --target /tmp/site [--dry-run]
    python benchmarks/gpu_check.py build-model --out /tmp/model [--tiny]
    python benchmarks/gpu_check.py train --trainer search|stock --model /tmp/model --result out.json [--steps 4]
    python benchmarks/gpu_check.py summary --results DIR
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Qwen2.5-0.5B's configuration (hidden 896, 24 layers, 14 query / 2 key-value heads, MLP 4864), random weights
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, rope_theta=1000000.0, rms_norm_eps=1e-6)  # fmt: skip
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256)


# --- install: the wheels the GPU machine lacks -----------------------------------------------------------------------


def _wheel_metadata(path: str) -> tuple[str, list[str]]:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode("utf-8", "replace").splitlines()
    dist = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Name:"))
    requires = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    return dist, requires


def plan_install(wheels_dir: str) -> tuple[list[str], list[str]]:
    """Wheels to install (missing here, or needed at a version this machine lacks) and unmet requirements we cannot
    satisfy from the folder."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # no `packaging` (transformers needs it, so unlikely): every wheel whose package is missing
        paths = sorted(glob.glob(os.path.join(wheels_dir, "*.whl")))
        missing = []
        for path in paths:
            try:
                version(_wheel_metadata(path)[0])
            except PackageNotFoundError:
                missing.append(path)
        return missing, ["`packaging` is missing: requirements not checked"]

    wheels = {}
    for path in sorted(glob.glob(os.path.join(wheels_dir, "*.whl"))):
        dist, requires = _wheel_metadata(path)
        wheels[canonicalize_name(dist)] = (path, requires)

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    chosen = {name for name in wheels if installed(name) is None}
    unmet, changed = [], True
    while changed:  # add the wheels that the chosen ones need and this machine lacks (or has too old)
        changed = False
        for name in list(chosen):
            for line in wheels[name][1]:
                requirement = Requirement(line)
                if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                    continue
                needed = canonicalize_name(requirement.name)
                have = installed(needed)
                if needed in chosen or (have is not None and requirement.specifier.contains(have, prereleases=True)):
                    continue
                if needed in wheels:
                    chosen.add(needed)
                    changed = True
                elif f"{needed} {requirement.specifier}" not in unmet:
                    unmet.append(f"{needed}{requirement.specifier} (have {have}; needed by {name})")
    return sorted(wheels[name][0] for name in chosen), unmet


def install(args) -> None:
    paths, unmet = plan_install(args.wheels)
    names = [os.path.basename(path).split("-")[0] for path in paths]
    print(f"[install] {len(paths)} wheel(s) to install into {args.target}: {', '.join(names) or 'none'}")
    for line in unmet:
        print(f"[install] WARNING unmet requirement: {line}")
    if paths and not args.dry_run:
        os.makedirs(args.target, exist_ok=True)
        try:
            import pip  # noqa: F401
        except ImportError:  # a wheel is a zip of what goes into site-packages: unpack it there
            for path in paths:
                with zipfile.ZipFile(path) as archive:
                    archive.extractall(args.target)
            return
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                   args.target, *paths]  # fmt: skip
        subprocess.run(command, check=True)


# --- build-model: random weights, real shape, offline tokenizer ------------------------------------------------------


def build_model(args) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trl_search.data import DEFAULT_PROMPT_TEMPLATE, SAMPLE_CORPUS_PATH, SAMPLE_QUESTIONS_PATH
    from trl_search.offline_models import build_tokenizer

    texts = [DEFAULT_PROMPT_TEMPLATE] * 4
    for path, key in ((SAMPLE_CORPUS_PATH, "contents"), (SAMPLE_QUESTIONS_PATH, "question")):
        with open(path, encoding="utf-8") as handle:
            texts += [json.loads(line)[key] for line in handle if line.strip()]
    tokenizer = build_tokenizer(texts, vocab_size=500 if args.tiny else 4096)
    shape = TINY if args.tiny else QWEN25_05B
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         **shape)  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    count = sum(p.numel() for p in model.parameters())
    print(f"[build-model] {args.out}: {count / 1e6:.0f}M parameters, vocab {len(tokenizer)}, shape {shape}")


# --- train: a few timed steps ----------------------------------------------------------------------------------------


def _timing_callback():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def _common_args(args) -> list[str]:
    cpu = ["--use_cpu", "true", "--bf16", "false"] if args.cpu else ["--bf16", "true"]
    return [
        "--output_dir", args.output_dir, "--max_steps", str(args.steps), "--per_device_train_batch_size",
        str(args.batch), "--num_generations", str(args.num_generations), "--learning_rate", "1e-6", "--beta", "0.001",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
        "--dtype", "float32" if args.cpu else "bfloat16", *cpu,
    ]  # fmt: skip


def train(args) -> None:
    import torch

    if os.environ.get("TRL_SEARCH_SKIP_DS_SHM_OP") == "1" and args.cpu:
        # DeepSpeed on CPU JIT-compiles an optional shared-memory allreduce kernel (minutes); gloo does without it.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import train_nq

    timer = _timing_callback()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if args.trainer == "search":  # our trainer, through the example script
        argv = [
            "--model_name_or_path", args.model, "--retriever", "sample", "--datasets", "sample", "--max_turns",
            str(args.max_turns), "--retrieval_top_k", "3", "--max_tokens_per_turn", str(args.tokens_per_turn),
            "--max_obs_length", "128", "--max_completion_length", str(args.completion_length), *_common_args(args),
        ]  # fmt: skip
        script_args, training_args, model_args = train_nq.make_parser().parse_args_and_config(argv)
        trainer = train_nq.main(script_args, training_args, model_args, callbacks=[timer])
    else:  # stock GRPOTrainer on the same prompts, generating `--completion_length` tokens in one go
        from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

        from trl_search.data import DEFAULT_PROMPT_TEMPLATE, make_training_mix
        from trl_search.rewards import exact_match_reward

        argv = ["--model_name_or_path", args.model, "--max_completion_length", str(args.completion_length)]
        training_args, model_args = TrlParser((GRPOConfig, ModelConfig)).parse_args_and_config(
            argv + _common_args(args)
        )
        training_args.model_init_kwargs = {"dtype": model_args.dtype}
        dataset = make_training_mix(["sample"], template=DEFAULT_PROMPT_TEMPLATE, seed=training_args.seed)
        trainer = GRPOTrainer(model=model_args.model_name_or_path, reward_funcs=exact_match_reward,
                              args=training_args, train_dataset=dataset, callbacks=[timer])  # fmt: skip
        trainer.train()
    if trainer.accelerator.is_main_process:
        plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        result = {
            "trainer": args.trainer,
            "deepspeed": trainer.is_deepspeed_enabled,
            "zero_stage": plugin.zero_stage if plugin is not None else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "step_times": timer.times,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "completions_per_step": args.batch * trainer.accelerator.num_processes,
            "sampled_tokens": statistics.mean(entry["completions/mean_length"] for entry in logs),
            "searches_per_sample": statistics.mean(entry.get("search/searches_per_sample", 0.0) for entry in logs),
            "masked_token_ratio": statistics.mean(entry.get("search/masked_token_ratio", 0.0) for entry in logs),
        }
        with open(args.result, "w") as handle:
            json.dump(result, handle, indent=1)
        print(f"[train] {json.dumps(result)}")


# --- summary ---------------------------------------------------------------------------------------------------------


def summary(args) -> None:
    rows, by_stage = [], {}
    for stage in args.stages.split(","):
        path = os.path.join(args.results, f"{stage}.json")
        status_path = os.path.join(args.results, f"{stage}.status")
        status = open(status_path).read().strip() if os.path.exists(status_path) else "not run"
        result = json.load(open(path)) if os.path.exists(path) else None
        by_stage[stage] = result
        rows.append((stage, status, result))
    print("\n=== trl-search GPU check ===")
    device = next((r["device"] for _, _, r in rows if r), "unknown")
    print(f"device: {device}")
    header = (
        f"{'stage':<14} {'status':<22} {'ZeRO':>4} {'step s (median)':>15} {'peak GB':>8} {'sampled tok':>11} "
        f"{'vs stock':>8}"
    )
    print(header)
    print("-" * len(header))
    for stage, status, result in rows:
        if result is None:
            print(f"{stage:<14} {status:<22}")
            continue
        timed = result["step_times"][1:] or result["step_times"]  # the first step warms up
        median = statistics.median(timed)
        memory = f"{result['peak_memory_gb']:.1f}" if result["peak_memory_gb"] is not None else "-"
        ratio = "-"
        stock = by_stage.get(f"stock-{stage}")
        if result["trainer"] == "search" and stock:
            stock_median = statistics.median(stock["step_times"][1:] or stock["step_times"])
            ratio = f"{median / stock_median:.2f}x"
        zero = str(result["zero_stage"]) if result["deepspeed"] else "-"
        print(
            f"{stage:<14} {status:<22} {zero:>4} {median:>15.2f} {memory:>8} {result['sampled_tokens']:>11.0f} "
            f"{ratio:>8}"
        )
    print("target: search step <= 1.10x the stock step generating as many tokens (sampled tokens per completion)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("install")
    p.add_argument("--wheels", default=os.path.join(ROOT, "benchmarks", "wheels"))
    p.add_argument("--target", required=True)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=install)
    p = commands.add_parser("build-model")
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true")
    p.set_defaults(func=build_model)
    p = commands.add_parser("train")
    p.add_argument("--trainer", choices=["search", "stock"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--output_dir", default=None)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=32, help="completions per device and step")
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--max_turns", type=int, default=2)
    p.add_argument("--tokens_per_turn", type=int, default=64)
    p.add_argument("--completion_length", type=int, default=512)
    p.add_argument("--cpu", action="store_true")
    p.set_defaults(func=train)
    p = commands.add_parser("summary")
    p.add_argument("--results", required=True)
    p.add_argument("--stages", required=True)
    p.set_defaults(func=summary)
    args = parser.parse_args(argv)
    if getattr(args, "output_dir", "unset") is None:
        args.output_dir = os.path.splitext(args.result)[0] + "-out"
    args.func(args)


if __name__ == "__main__":
    main()
