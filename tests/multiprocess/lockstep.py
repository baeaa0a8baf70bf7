"""Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo).

Two prompts whose scripted trajectories need different numbers of turns land on different ranks: "[fast]" answers at
once (1 turn), "[slow]" searches twice then answers (3 turns). Two trainings run one after the other:
1. transformers generation, queries of both ranks gathered to the main process (`gather_retrieval_queries=True`);
2. vLLM server mode (a fake server, see tests/fake_vllm.py), each rank querying its own retriever.
Each rank writes what it saw to `<out>/rank<i>.json`.
"""

import json
import os
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import pytest  # noqa: E402
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


def train(model_dir, out_dir, name, **overrides):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    script_model_forward(model, tokenizer, SCRIPTS)
    retriever = RecordingRetriever.build(CORPUS, backend="numpy")
    retriever.calls = []
    args = SearchGRPOConfig(
        output_dir=os.path.join(out_dir, name),
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=2,
        max_completion_length=160,
        max_tokens_per_turn=32,
        max_obs_length=64,
        max_turns=2,
        top_k=1,
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
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, retriever=retriever
    )
    trainer.rollouts = []
    trainer.train()
    return {
        "rollouts": trainer.rollouts,
        "retriever_calls": retriever.calls,
        "num_processes": trainer.accelerator.num_processes,
        "backend": str(trainer.accelerator.state.backend),
        "gathered": type(trainer.search_rollout.retriever).__name__,
        "log": [entry for entry in trainer.state.log_history if "loss" in entry],
    }


def main(model_dir, out_dir):
    result = {"transformers_gathered": train(model_dir, out_dir, "transformers", gather_retrieval_queries=True)}
    with pytest.MonkeyPatch.context() as patch:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        fakes = install_fake_vllm(patch, tokenizer, SCRIPTS, "server")
        result["vllm_server"] = train(model_dir, out_dir, "vllm", use_vllm=True, vllm_mode="server")
        if fakes.client is not None:
            result["vllm_server"]["server_requests"] = [
                {"prompts": len(body["prompt"]), "max_tokens": body["max_tokens"]} for body in fakes.client.requests
            ]
            result["vllm_server"]["weight_syncs"] = len(fakes.client.loaded_weights)
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
