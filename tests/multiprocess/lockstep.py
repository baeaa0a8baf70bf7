"""Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo).

Two prompts whose scripted trajectories need different numbers of turns land on different ranks: "[fast]" answers at
once (1 turn), "[slow]" searches twice then answers (3 turns). Mode "ddp" runs three trainings one after the other:
1. transformers generation, queries of both ranks gathered to the main process (`gather_retrieval_queries=True`);
2. vLLM server mode (a fake server, see tests/fake_vllm.py), each rank querying its own retriever;
3. vLLM colocate with tensor parallelism over both ranks.
Under DeepSpeed ZeRO-3 (`--zero_stage 3`), mode "zero3" generates without a parameter gather and mode "zero3_gathered"
with the default gather. Each rank writes what it saw to `<out>/rank<i>.json`.
"""

import json
import os
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from tests.fake_vllm import install_fake_vllm  # noqa: E402
from tests.scripted import script_model_forward  # noqa: E402
from trl_search import SearchGRPOConfig, SearchGRPOTrainer  # noqa: E402
from trl_search.retrievers import BM25Retriever  # noqa: E402


CORPUS = [
    {"id": "0", "contents": '"Veldoria"\nVeldoria is a country whose capital is Quarnel.'},
    {"id": "1", "contents": '"Brantis"\nThe city of Brantis was founded by Ostavel the Elder.'},
]
SCRIPTS = {
    "[fast]": [["<answer> Quarnel </answer>"]],
    "[slow]": [
        ["<search> capital of Veldoria </search>", "<search> Brantis founder </search>", "<answer> Ostavel </answer>"]
    ],
}
QUESTIONS = [("[fast] What is the capital of Veldoria?", ["Quarnel"]), ("[slow] Who founded Brantis?", ["Ostavel"])]


class RecordingRetriever(BM25Retriever):
    calls: list

    def search(self, queries, k):
        self.calls.append(list(queries))
        return super().search(queries, k)


class RecordingTrainer(SearchGRPOTrainer):
    def _rollout_with_transformers(self, prompt_ids, golden_answers):
        start = time.perf_counter()  # parameter gather and every turn: the whole generation phase of a step
        output = super()._rollout_with_transformers(prompt_ids, golden_answers)
        self.rollout_seconds.append(time.perf_counter() - start)
        return output

    def _log_rollout_metrics(self, output, mode):
        self.rollouts.append(
            {
                "turns": output.turns,
                "markers": sorted(
                    {m for s in output.samples for m in SCRIPTS if m in self._tokenizer.decode(s.prompt_ids)}
                ),
                "sample_turns": [s.num_turns for s in output.samples],
                "answered": [s.answered for s in output.samples],
            }
        )
        super()._log_rollout_metrics(output, mode)


def train(model_dir, out_dir, name, script=None, **overrides):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if script is None:
        script_model_forward(model, tokenizer, SCRIPTS)
    else:
        script(model, tokenizer)
    retriever = RecordingRetriever.build(CORPUS, backend="numpy")
    retriever.calls = []
    on_main_only = overrides.get("gather_retrieval_queries", False)  # the other rank passes no retriever at all
    args = SearchGRPOConfig(
        output_dir=os.path.join(out_dir, name),
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=2,
        max_completion_length=160,
        max_tokens_per_turn=32,
        max_obs_length=64,
        max_turns=2,
        retrieval_top_k=1,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,  # with LOCAL_RANK set by the launcher: one process per rank on gloo
        seed=0,
        **overrides,
    )
    dataset = Dataset.from_list([{"prompt": q, "golden_answers": a} for q, a in QUESTIONS])
    trainer = RecordingTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        retriever=None if on_main_only and args.process_index != 0 else retriever,
    )
    trainer.rollouts, trainer.rollout_seconds = [], []
    trainer.train()
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    return {
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "generate_calls": getattr(model, "generate_calls", None),
        "rollouts": trainer.rollouts,
        "rollout_seconds": trainer.rollout_seconds,
        "ds3_gather_for_generation": args.ds3_gather_for_generation,
        "retriever_calls": retriever.calls,
        "num_processes": trainer.accelerator.num_processes,
        "backend": str(trainer.accelerator.state.backend),
        "gathered": type(trainer.search_rollout.retriever).__name__,
        "has_retriever": trainer.retriever is not None,
        "log": [entry for entry in trainer.state.log_history if "loss" in entry],
    }


def script_real_forward(model, tokenizer):
    """Like `script_model_forward`, but every generation forward pass also runs the real model (so that under ZeRO-3
    without a parameter gather each forward is the collective it is in real training, and the generator's key/value
    cache is real); only the logits are replaced. Records the number of `generate` calls."""
    original_generate, original_forward = model.generate, model.forward
    state = {"targets": None, "step": 0}
    model.generate_calls = 0

    def turn_ids(context: str) -> list[int]:
        marker = next((m for m in SCRIPTS if m in context), None)
        if marker is None:  # the one-token dummy a rank without samples generates to join the collective
            return [tokenizer.eos_token_id]
        script, turn = SCRIPTS[marker][0], context.count("</information>")
        if turn >= len(script):
            return [tokenizer.eos_token_id]
        return tokenizer(script[turn] + " filler filler", add_special_tokens=False)["input_ids"]

    def generate(*args, **kwargs):
        model.generate_calls += 1
        input_ids = kwargs["input_ids"]
        state["targets"] = [turn_ids(tokenizer.decode(row, skip_special_tokens=True)) for row in input_ids.tolist()]
        state["step"] = 0
        kwargs["generation_config"].do_sample = False
        try:
            return original_generate(*args, **kwargs)
        finally:
            state["targets"] = None

    def forward(input_ids=None, **kwargs):
        output = original_forward(input_ids=input_ids, **kwargs)  # real: a collective under ZeRO-3
        if state["targets"] is None:
            return output
        # One forward per generated token (the prefill first). Counted, not read from the input width: with the
        # generator's cache reuse, a prefill holds only the tokens not cached yet.
        step = state["step"]
        state["step"] += 1
        logits = torch.full_like(output.logits, -1e4)
        for row, targets in enumerate(state["targets"]):
            logits[row, -1, targets[step] if step < len(targets) else tokenizer.eos_token_id] = 1e4
        output.logits = logits
        return output

    model.generate, model.forward = generate, forward
    return model


def main(model_dir, out_dir, mode):
    result = {}
    if mode == "zero3":  # generation without a parameter gather: every forward pass is a collective
        result["zero3"] = train(
            model_dir, out_dir, "zero3", ds3_gather_for_generation=False, script=script_real_forward
        )
    elif mode == "zero3_gathered":  # the default: parameters gathered for generation, each forward pass is local
        result["zero3_gathered"] = train(model_dir, out_dir, "zero3_gathered", script=script_real_forward)
    else:
        result["transformers_gathered"] = train(model_dir, out_dir, "transformers", gather_retrieval_queries=True)
        with pytest.MonkeyPatch.context() as patch:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            fakes = install_fake_vllm(patch, tokenizer, SCRIPTS, "server")
            result["vllm_server"] = train(model_dir, out_dir, "vllm", use_vllm=True, vllm_mode="server")
            if fakes.client is not None:
                result["vllm_server"]["server_requests"] = [
                    {"prompts": len(body["prompt"]), "n": body.get("n", 1), "max_tokens": body["max_tokens"]}
                    for body in fakes.client.requests
                ]
                result["vllm_server"]["weight_syncs"] = len(fakes.client.loaded_weights)
        with pytest.MonkeyPatch.context() as patch:  # colocate, tensor parallel over both ranks
            fakes = install_fake_vllm(patch, AutoTokenizer.from_pretrained(model_dir), SCRIPTS, "colocate")
            result["vllm_colocate_tp2"] = train(
                model_dir, out_dir, "tp2", use_vllm=True, vllm_mode="colocate", vllm_tensor_parallel_size=2
            )
            result["vllm_colocate_tp2"]["llm_batches"] = [len(params) for params in fakes.llm.calls]
            result["vllm_colocate_tp2"]["llm_rows"] = [sum(p.n for p in params) for params in fakes.llm.calls]
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    # The results are written: skip the interpreter's teardown, where a C++ thread of the distributed stack sometimes
    # aborts the rank ("terminate called without an active exception") after a successful run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    if os.environ.get("TRL_SEARCH_SKIP_DS_SHM_OP") == "1":  # see tests/multiprocess/run_train_nq.py
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if os.environ.get("LOCKSTEP_BREAK_JOIN") == "1":  # to see the test catch a rank that skips the collective
        RecordingTrainer._forward_is_collective = lambda self: False
    if os.environ.get("LOCKSTEP_ALWAYS_JOIN") == "1":  # the alternative to measure: idle ranks join every generate
        RecordingTrainer._forward_is_collective = lambda self: True
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "ddp")
