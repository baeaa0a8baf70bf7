"""A paced policy for benchmarks: makes a randomly initialised model write Search-R1-shaped trajectories.

A random model never writes a tag, so every turn of a search rollout would end in corrective feedback and a
benchmark would time a trajectory no real run produces. `PacedPolicy` is a logits processor that steers each row
through a realistic turn; the model still runs every forward pass and the sampler still samples, but from a
distribution with one token left:

    <think> {N thinking tokens} </think>
    <search> {a question of the pool} </search>          while fewer than K searches were made
    <answer> {an answer of the pool} </answer>           once K searches were made

N is drawn per turn from `think_tokens` and K per trajectory from `searches` (inclusive ranges). Defaults follow what
Search-R1 runs of Qwen2.5-3B show: 2-3 searches per question, a few dozen to ~150 tokens of reasoning per turn; with
3 passages of ~100 tokens per search, about three quarters of a completion is injected text.
Thinking tokens are drawn from the vocabulary less EOS, special tokens and any token containing `<` or `>`.

Every choice, thinking tokens included, is a function of the row's context, its row in the batch and `seed`: the
trajectories do not depend on the weights or on float rounding, so the trainers of a comparison (ours with and without
cache reuse, successive steps) see exactly the same tokens.

Use: call `begin(input_ids)` before each `generate` call (the benchmark wraps `model.generate` to do so), and pass the
policy in `logits_processor`.

Example:
    >>> policy = PacedPolicy(tokenizer, queries=["capital of Krucoor"], answers=["Tousyza"])  # doctest: +SKIP
    >>> policy.begin(input_ids)  # doctest: +SKIP
    >>> model.generate(input_ids, logits_processor=LogitsProcessorList([policy]))  # doctest: +SKIP
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from transformers import LogitsProcessor


# How many observations a context already holds: every rendered observation opens with hit 1's header.
OBSERVATION_MARKER = "Doc 1(Title:"


class PacedPolicy(LogitsProcessor):
    """Forces the tokens of a Search-R1 turn: an opening, N thinking tokens, then a search or an answer.

    Args:
        tokenizer: the policy's tokenizer.
        queries: search queries to pick from (e.g. the training questions), so that retrieval sees real queries.
        answers: answers to pick from.
        think_tokens: inclusive range of free tokens per turn.
        searches: inclusive range of searches per trajectory.
        seed: mixed into every choice.
    """

    def __init__(
        self,
        tokenizer,
        queries: list[str],
        answers: list[str],
        think_tokens: tuple[int, int] = (40, 150),
        searches: tuple[int, int] = (2, 3),
        seed: int = 0,
    ):
        if not queries or not answers:
            raise ValueError("PacedPolicy needs at least one query and one answer.")
        if not 1 <= think_tokens[0] <= think_tokens[1] or not 0 <= searches[0] <= searches[1]:
            raise ValueError(f"Bad ranges: think_tokens={think_tokens}, searches={searches}.")
        self.tokenizer = tokenizer
        self.think_tokens = think_tokens
        self.searches = searches
        self.seed = seed
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self._open = encode("<think> ")
        self._search = [encode(f" </think>\n<search> {query} </search>") for query in queries]
        self._answer = [encode(f" </think>\n<answer> {answer} </answer>") for answer in answers]
        vocab = len(tokenizer)
        banned = torch.zeros(vocab, dtype=torch.bool)
        for token_id in range(vocab):
            text = tokenizer.decode([token_id])
            banned[token_id] = "<" in text or ">" in text or not text.strip()
        banned[list(tokenizer.all_special_ids)] = True
        self._banned = banned
        self._thinking_ids = (~banned).nonzero().flatten().numpy()
        self._plan: torch.Tensor | None = None  # (rows, longest plan): the token each row must write at each step
        self._step = 0
        self.longest_turn = len(self._open) + think_tokens[1] + max(len(ids) for ids in self._search + self._answer)

    def _rng(self, tokens: list[int], row: int) -> np.random.Generator:
        return np.random.default_rng([zlib.crc32(np.asarray(tokens, dtype=np.int64).tobytes()), row, self.seed])

    def searches_made(self, tokens: list[int]) -> int:
        return self.tokenizer.decode(tokens).count(OBSERVATION_MARKER)

    def plan_turn(self, context: list[int], row: int = 0) -> list[int]:
        """The tokens of the turn that this context (at this row of the batch) gets."""
        made = self.searches_made(context)
        rng = self._rng(context, row)
        low, high = self.searches
        # K is drawn per trajectory: with s searches made, answer with the probability that K == s given K >= s.
        answer = made >= high or (made >= low and rng.random() < 1.0 / (high - made + 1))
        suffix = (
            self._answer[rng.integers(len(self._answer))] if answer else self._search[rng.integers(len(self._search))]
        )
        thinking = rng.choice(
            self._thinking_ids, size=int(rng.integers(self.think_tokens[0], self.think_tokens[1] + 1))
        )
        return self._open + thinking.tolist() + suffix

    def begin(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Plans the next `generate` call's turn for every row of its (left-padded) input."""
        rows = []
        for row, ids in enumerate(input_ids.tolist()):
            if attention_mask is not None:
                ids = [token for token, keep in zip(ids, attention_mask[row].tolist()) if keep]
            rows.append(self.plan_turn(ids, row))
        width = max(len(plan) for plan in rows)
        eos = self.tokenizer.eos_token_id
        self._plan = torch.tensor([plan + [eos] * (width - len(plan)) for plan in rows])
        self._step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._plan is None or self._plan.shape[0] != scores.shape[0]:
            raise RuntimeError("PacedPolicy.begin(input_ids) must be called before each generate call.")
        step = min(self._step, self._plan.shape[1] - 1)
        self._step += 1
        wanted = self._plan[:, step].to(scores.device)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, wanted[:, None], 0.0)


class NoEarlyStop(LogitsProcessor):
    """Bans EOS, so that stock `GRPOTrainer` generates exactly `max_completion_length` tokens per completion."""

    def __init__(self, eos_token_ids: list[int]):
        self.eos_token_ids = list(eos_token_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.eos_token_ids] = float("-inf")
        return scores
