"""examples/train_nq.py with examples/configs/sample.yaml: two CPU processes under DDP and under DeepSpeed ZeRO-2."""

import json
import os
import re
import subprocess
import sys

import pytest

from .test_distributed import ROOT, accelerate_launch


def run_sample(tmp_path, accelerate_config, timeout):
    out = tmp_path / "out"
    config = "examples/configs/sample.yaml"
    script = ["tests/multiprocess/run_train_nq.py", "--config", config, "--output_dir", str(out)]
    accelerate_launch(
        script,
        timeout=timeout,
        config_file=os.path.join(ROOT, "examples", "accelerate_configs", accelerate_config),
    )
    return [json.loads((out / f"run_{rank}.json").read_text()) for rank in (0, 1)], out


def check_trained(runs, out):
    for run in runs:
        assert run["num_processes"] == 2 and run["backend"] == "gloo"
        assert len(run["steps"]) == 3
        assert all(step["search/turns_per_sample"] >= 1 for step in run["steps"])
    assert {"config.json", "model.safetensors", "search_config.json", "tokenizer.json"} <= set(runs[0]["saved"])
    settings = json.loads((out / "search_config.json").read_text())
    assert (
        settings["max_turns"] == 2
        and settings["retrieval_top_k"] == 2
        and settings["retriever"]["class"] == "BM25Retriever"
    )
    assert "{question}" in settings["prompt_template"]
    # prompt_style auto, as Search-R1: the tokenizer has a chat template, so prompts went through it; saved for eval
    assert settings["prompt_format"] == "conversational"


@pytest.mark.slow
def test_sample_config_trains_on_two_cpu_processes_with_ddp(tmp_path):
    runs, out = run_sample(tmp_path, "cpu_ddp.yaml", timeout=300)
    assert all(run["distributed_type"] == "DistributedType.MULTI_CPU" for run in runs)
    assert not any(run["is_deepspeed_enabled"] for run in runs)
    check_trained(runs, out)


@pytest.mark.slow
def test_sample_config_trains_on_two_cpu_processes_with_deepspeed_zero2(tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("TRL_SEARCH_SKIP_DS_SHM_OP", "1")
    runs, out = run_sample(tmp_path, "cpu_zero2.yaml", timeout=400)
    # `accelerate launch --cpu` with a DeepSpeed config silently drops DeepSpeed: check that it really ran
    assert all(run["is_deepspeed_enabled"] and run["zero_stage"] == 2 for run in runs)
    assert all(run["distributed_type"] == "DistributedType.DEEPSPEED" for run in runs)
    check_trained(runs, out)


CONFIGS = os.path.join(ROOT, "examples", "configs")


@pytest.mark.parametrize(
    "name", ["qwen2.5-3b-grpo.yaml", "qwen2.5-7b-grpo.yaml", "qwen3-4b-tool-call.yaml", "sample.yaml"]
)
def test_configs_parse_and_start_with_their_launch_command(name):
    from .multiprocess.run_train_nq import load_example

    path = os.path.join(CONFIGS, name)
    with open(path) as handle:
        header = re.sub(r"\s*\\\n#\s*", " ", "".join(line for line in handle if line.startswith("#")))
    assert f"examples/train_nq.py --config examples/configs/{name}" in header  # the launch command, joined
    # bf16 needs a GPU: switch it off to parse here
    script_args, training_args, model_args = (
        load_example().make_parser().parse_args_and_config(["--config", path, "--bf16", "false", "--use_cpu", "true"])
    )
    if name == "sample.yaml":
        assert script_args.sample_data and training_args.max_turns == 2
        return
    if name == "qwen3-4b-tool-call.yaml":
        assert training_args.search_protocol == "tool_call" and script_args.prompt_style == "chat"
        assert model_args.model_name_or_path.startswith("Qwen/Qwen3-")
        return
    # the paper's settings (DESIGN.md section 1), 512 prompts per optimizer step on 8 GPUs; prompts formatted as
    # Search-R1's pipeline does (the chat template whenever the tokenizer has one)
    assert script_args.prompt_style == "auto"
    assert model_args.model_name_or_path.startswith("Qwen/Qwen2.5-") and script_args.datasets == "nq,hotpotqa"
    assert (training_args.learning_rate, training_args.beta, training_args.temperature) == (1e-6, 0.001, 1.0)
    assert (training_args.num_generations, training_args.max_turns, training_args.retrieval_top_k) == (5, 4, 3)
    assert training_args.max_tokens_per_turn == training_args.max_obs_length == 500
    completions = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * 8
    assert completions // training_args.num_generations == 512


def test_the_former_demo_flag_names_its_new_spelling(tmp_path):
    from .multiprocess.run_train_nq import load_example

    config = tmp_path / "old.yaml"
    config.write_text("demo: true\nuse_cpu: true\n")
    with pytest.raises(ValueError, match="--sample_data"):
        load_example().make_parser().parse_args_and_config(["--config", str(config)])


@pytest.mark.slow
def test_gpu_check_script_runs_its_plain_stages_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --cpu-smoke --quick: our trainer and stock GRPOTrainer on a tiny model, then the table."""
    env = {**os.environ, "GPU_CHECK_DIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    process = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    table = process.stdout[process.stdout.index("=== trl-search GPU check ===") :]
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith(("plain", "stock-plain"))}
    assert " ok (" in rows["plain"] and " ok (" in rows["stock-plain"]
    assert re.search(r"\d+\.\d\dx$", rows["plain"].strip())  # our step relative to the stock one
    ours = json.loads((tmp_path / "results" / "plain.json").read_text())
    stock = json.loads((tmp_path / "results" / "stock-plain.json").read_text())
    assert len(ours["step_times"]) == len(stock["step_times"]) == 2
    assert stock["sampled_tokens"] <= round(ours["sampled_tokens"]) + 1  # stock generates as many tokens as we sample
