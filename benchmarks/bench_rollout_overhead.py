"""Per-turn overhead of the search rollout outside generation and retrieval.

The generator replays pre-tokenised turns and the retriever picks passages from a fixed pool, both timed separately, so what
is left is the rollout's own work: reading actions, deduplicating queries, rendering and tokenising observations,
masks and bookkeeping. Printed side by side with one real generation turn of a tiny model on the same batch.

    python benchmarks/bench_rollout_overhead.py [--samples 512] [--turns 4]
"""

import argparse
import os
import time

import torch


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import GenerationConfig  # noqa: E402

from trl_search.generation import GeneratedTurn, TransformersGenerator  # noqa: E402
from trl_search.offline_models import build_model, build_tokenizer  # noqa: E402
from trl_search.retrievers import Passage, Retriever  # noqa: E402
from trl_search.rollout import SearchRollout  # noqa: E402


WORDS = "capital river founder city country year mountain company people language".split()


class ReplayGenerator:
    """Returns pre-tokenised turns: `turns - 1` searches (queries repeat within groups of 5), then an answer."""

    def __init__(self, tokenizer, samples, turns):
        self.eos_token_ids = [tokenizer.eos_token_id]
        self.seconds = 0.0
        self.turn = 0
        self.search = [
            tokenizer(
                f"<think> I still need the {WORDS[i % 10]} of place {i // 5} </think> <search> {WORDS[i % 10]} of "
                f"place {i // 5} </search>",
                add_special_tokens=False,
            )["input_ids"]
            for i in range(samples)
        ]
        self.answer = tokenizer("<think> found it </think> <answer> Quarnel </answer>", add_special_tokens=False)[
            "input_ids"
        ]
        self.turns = turns

    def generate(self, contexts, max_new_tokens, stop_strings):
        start = time.perf_counter()
        last = self.turn == self.turns - 1
        self.turn += 1
        out = [GeneratedTurn(list(self.answer if last else self.search[i]), None, True) for i in range(len(contexts))]
        self.seconds += time.perf_counter() - start
        return out


class PoolRetriever(Retriever):
    """Answers each query with 3 of 1,000 passages of ~100 words, chosen by the query: distinct queries mostly get
    distinct observations, as with a real index."""

    def __init__(self):
        self.pool = [
            Passage(str(i), f"Place {i}", " ".join(WORDS[(i * 3 + j * 7) % 10] for j in range(100)), 1.0)
            for i in range(1000)
        ]

    def search(self, queries, k):
        return [[self.pool[(hash(query) + offset) % 1000] for offset in range(k)] for query in queries]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    texts = [" ".join(WORDS[(i * 7 + j) % 10] for j in range(30)) + " place Quarnel" for i in range(300)]
    tokenizer = build_tokenizer(texts, vocab_size=2000)
    prompts = [
        tokenizer(f"Question: what is the {WORDS[i % 10]} of place {i // 5}?")["input_ids"]
        for i in range(args.samples)
    ]
    rollout = SearchRollout(
        PoolRetriever(),
        tokenizer,
        max_turns=args.turns,
        retrieval_top_k=3,
        max_obs_length=500,
        max_completion_length=4096,
    )

    overheads = []
    for _ in range(args.repeats):
        generator = ReplayGenerator(tokenizer, args.samples, args.turns)
        start = time.perf_counter()
        output = rollout.run(prompts, generator)
        total = time.perf_counter() - start
        overhead = total - generator.seconds - output.retriever_seconds
        sample_turns = sum(sample.num_turns for sample in output.samples)
        overheads.append(overhead / sample_turns * 1e3)
    overhead_ms = min(overheads)

    # One real generation turn of a tiny (2-layer, 64-wide) model on a slice of the same prompts, for scale.
    model = build_model(tokenizer).eval()
    config = GenerationConfig(do_sample=True, max_new_tokens=32, pad_token_id=tokenizer.pad_token_id)
    real = TransformersGenerator(model, tokenizer, config, eos_token_ids=[tokenizer.eos_token_id])
    batch = 64
    start = time.perf_counter()
    real.generate(prompts[:batch], [32] * batch, rollout.protocol.stop_strings)
    tiny_generation_ms = (time.perf_counter() - start) / batch * 1e3

    print(f"samples={args.samples} turns={args.turns} sample-turns={sample_turns}")
    print(f"rollout overhead (outside generation and retrieval): {overhead_ms:.3f} ms per sample per turn")
    print(f"tiny-model generation of 32 tokens (CPU, batch {batch}):  {tiny_generation_ms:.3f} ms per sample per turn")
    print(f"overhead / tiny-model generation: {overhead_ms / tiny_generation_ms:.3f}x")


if __name__ == "__main__":
    main()
