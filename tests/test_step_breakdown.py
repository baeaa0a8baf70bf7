"""The step breakdown benchmark and its paced policy: every phase measured, phases adding up to the step."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import GenerationConfig

from trl_search.generation import TransformersGenerator


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from paced_policy import OBSERVATION_MARKER, PacedPolicy  # noqa: E402


@pytest.fixture(scope="module")
def breakdown(tmp_path_factory):
    out = tmp_path_factory.mktemp("breakdown") / "result.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "step_breakdown.py"), "--smoke", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text())["results"], completed.stdout


def test_every_phase_is_measured_and_the_phases_add_up(breakdown):
    results, stdout = breakdown
    assert [r["kind"] for r in results] == ["search", "stock-sampled", "stock-total"]
    for result in results:
        assert result["status"] == "ok" and result["steps"]
        for step in result["steps"]:
            for phase in ("generation", "logprobs", "fwd/bwd", "optimizer", "rewards", "trl batching"):
                assert step[phase] > 0, (result["kind"], phase)
            # Derived phases are differences of nested timers: a negative one would mean a method timed twice.
            assert step["rollout"] >= 0
            # What no timer covers (clipping, scheduler, zero_grad) stays a small part of the step.
            assert abs(step["other"]) <= 0.1 * step["step"], step
            named = sum(value for key, value in step.items() if key not in ("step", "other", "calls"))
            assert named == pytest.approx(step["step"] - step["other"])
    ours = results[0]["steps"][0]
    assert ours["retrieval"] > 0 and ours["rollout"] > 0
    assert all(step["retrieval"] == 0 for result in results[1:] for step in result["steps"])
    assert "| stock, = total |" in stdout


def test_stock_runs_generate_as_many_tokens_as_ours(breakdown):
    results, _ = breakdown
    ours, sampled, total = results
    assert sampled["total_tokens"] == round(ours["sampled_tokens"])
    assert total["total_tokens"] == round(ours["total_tokens"])
    assert ours["total_tokens"] > 3 * ours["sampled_tokens"]  # 2-3 observations of ~3 passages dominate


def test_paced_trajectories_search_within_the_range(breakdown):
    results, _ = breakdown
    assert results[0]["searches"] and all(2 <= n <= 3 for n in results[0]["searches"])


def test_paced_policy_writes_a_search_turn_then_an_answer(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    policy = PacedPolicy(tiny_tokenizer, ["capital of Veldoria"], ["Quarnel"], think_tokens=(3, 6), searches=(1, 1))
    generator = TransformersGenerator(
        tiny_model, tiny_tokenizer, GenerationConfig(do_sample=True, pad_token_id=tiny_tokenizer.pad_token_id)
    )
    inner = tiny_model.generate

    def paced_generate(**kwargs):
        policy.begin(kwargs["input_ids"], kwargs["attention_mask"])
        return inner(**kwargs, logits_processor=[policy])

    tiny_model.generate = paced_generate
    prompt = tiny_tokenizer("Question: where?", add_special_tokens=False)["input_ids"]
    (first,) = generator.generate([prompt], [64], ["</search>", "</answer>"])
    text = tiny_tokenizer.decode(first.token_ids)
    assert first.stopped and text.startswith("<think> ") and text.endswith("<search> capital of Veldoria </search>")
    suffix = tiny_tokenizer(" </think>\n<search> capital of Veldoria </search>", add_special_tokens=False)
    assert first.token_ids[-len(suffix["input_ids"]) :] == suffix["input_ids"]
    free = len(first.token_ids) - len(policy._open) - len(suffix["input_ids"])  # sampled by the model itself
    assert 3 <= free <= 6
    observation = tiny_tokenizer(f"<information>{OBSERVATION_MARKER} x) y</information>", add_special_tokens=False)
    context = prompt + first.token_ids + observation["input_ids"]
    (second,) = generator.generate([context], [64], ["</search>", "</answer>"])
    assert tiny_tokenizer.decode(second.token_ids).endswith("<answer> Quarnel </answer>")
