"""Scripted policies: make generation emit known text so tests know exactly where every token falls."""

from __future__ import annotations

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from trl_search.generation import GeneratedTurn


class ScriptedGenerator:
    """A `TurnGenerator` that replays, per sample, a list of turn texts (keyed by the sample's prompt).

    It follows the backend contract: no token past a stop string, per-row token limits, EOS handling. Each call is
    recorded in `calls` as the list of sample keys that generated in that turn, and every turn it returned in
    `returned[key]`. With `logprobs=True` each token gets a sampling logprob of its own (distinct over the whole run),
    as vLLM reports them, so that a test can tell where every sampled token and its logprob ended up.
    """

    def __init__(
        self,
        tokenizer,
        scripts: dict[tuple[int, ...], list[str]],
        eos_after: set | None = None,
        logprobs: bool = False,
    ):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.turn_of = {key: 0 for key in scripts}
        self.eos_token_ids = [tokenizer.eos_token_id]
        self.calls: list[list[tuple[int, ...]]] = []
        self.returned: dict[tuple[int, ...], list[GeneratedTurn]] = {key: [] for key in scripts}
        self.logprobs = logprobs
        self._tokens_issued = 0

    def _key(self, context: list[int]) -> tuple[int, ...]:
        matches = [key for key in self.scripts if tuple(context[: len(key)]) == key]
        assert len(matches) == 1, "each context must start with exactly one scripted prompt"
        return matches[0]

    def generate(self, contexts, max_new_tokens, stop_strings):
        keys = [self._key(context) for context in contexts]
        self.calls.append(keys)
        turns = []
        for key, limit in zip(keys, max_new_tokens):
            script = self.scripts[key]
            text = script[self.turn_of[key]] if self.turn_of[key] < len(script) else ""
            self.turn_of[key] += 1
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text != "<EOS>" else []
            if text == "<EOS>" or text.endswith("<EOS>"):
                body = text[: -len("<EOS>")]
                ids = (self.tokenizer(body, add_special_tokens=False)["input_ids"] if body else []) + [
                    self.tokenizer.eos_token_id
                ]
            cut, stopped = len(ids), bool(ids) and ids[-1] == self.tokenizer.eos_token_id
            for end in range(1, len(ids) + 1):  # first prefix that ends with a stop string
                if any(self.tokenizer.decode(ids[:end]).endswith(stop) for stop in stop_strings):
                    cut, stopped = end, True
                    break
            if cut > limit:
                cut, stopped = limit, False
            turn = GeneratedTurn(token_ids=ids[:cut], logprobs=self._next_logprobs(cut), stopped=stopped)
            self.returned[key].append(turn)
            turns.append(turn)
        return turns

    def _next_logprobs(self, count: int) -> list[float] | None:
        if not self.logprobs:
            return None
        # Exact binary fractions, negative and distinct, so that equality tests are exact.
        values = [-(self._tokens_issued + i + 1) / 1024 for i in range(count)]
        self._tokens_issued += count
        return values


def script_model_forward(model, tokenizer, scripts: dict[str, list[list[str]]]):
    """Makes a real model's forward pass emit scripted turns, so that real `generate` (with its real stop-string
    criterion) runs on top, while training forward passes stay real.

    `scripts` maps a marker found in the prompt to that prompt's trajectories, each a list of turn texts. Rows of a
    prompt that have not generated yet take the trajectories in turn (so a GRPO group can hold different ones); later
    turns continue the trajectory whose first turn the row's context holds. Each turn text is followed by filler, so
    that a test sees whether generation ran past a stop string, except a text ending in "<EOS>", which is followed by
    the EOS token.
    """
    vocab = model.config.vocab_size
    original_generate, original_forward = model.generate, model.forward
    state = {"width": 0, "targets": [], "generating": False}
    next_trajectory = {marker: 0 for marker in scripts}

    def turn_ids(turn_text: str) -> list[int]:
        if turn_text.endswith("<EOS>"):
            return tokenizer(turn_text[: -len("<EOS>")], add_special_tokens=False)["input_ids"] + [
                tokenizer.eos_token_id
            ]
        return tokenizer(turn_text + " filler filler filler", add_special_tokens=False)["input_ids"]

    def pick_turn(text: str) -> str:
        marker = next(marker for marker in scripts if marker in text)
        completion = text[text.index(marker) :]
        trajectories = scripts[marker]
        started = [t for t in trajectories if t and t[0].removesuffix("<EOS>") in completion]
        if started:
            trajectory = max(started, key=lambda t: len(t[0]))
        else:
            trajectory = trajectories[next_trajectory[marker] % len(trajectories)]
            next_trajectory[marker] += 1
        turn = completion.count("</information>") if started else 0
        return trajectory[turn] if turn < len(trajectory) else "<EOS>"

    def generate(*args, **kwargs):
        input_ids = kwargs["input_ids"]
        state["width"] = input_ids.shape[1]
        state["targets"] = [
            turn_ids(pick_turn(tokenizer.decode(row, skip_special_tokens=True))) for row in input_ids.tolist()
        ]
        kwargs["generation_config"].use_cache = False
        kwargs["generation_config"].do_sample = False
        state["generating"] = True
        try:
            return original_generate(*args, **kwargs)
        finally:
            state["generating"] = False

    def forward(input_ids=None, **kwargs):
        if not state["generating"]:  # training forward passes stay real
            return original_forward(input_ids=input_ids, **kwargs)
        step = input_ids.shape[1] - state["width"]
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], vocab), -1e4)
        for row, targets in enumerate(state["targets"]):
            token = targets[step] if step < len(targets) else tokenizer.eos_token_id
            logits[row, -1, token] = 1e4
        return CausalLMOutputWithPast(logits=logits)

    model.generate = generate
    model.forward = forward
    return model
