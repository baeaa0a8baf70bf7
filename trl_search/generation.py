"""Per-turn generation backends for the search rollout: what a backend must do (`TurnGenerator`) and the
transformers one. The vLLM backends live in `vllm_generation.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class GeneratedTurn:
    """What a generator returns for one sample and one turn."""

    token_ids: list[int]
    logprobs: list[float] | None = None
    stopped: bool = False  # True: ended on a stop string or EOS; False: reached its token limit


class TurnGenerator(Protocol):
    """A generation backend: continues each context by at most its own token limit, stopping at the stop strings.

    It must return no token past the one that completes a stop string, and must accept an empty batch (a rank with
    no active sample still joins the collective calls of distributed generation).
    """

    def generate(
        self, contexts: list[list[int]], max_new_tokens: list[int], stop_strings: Sequence[str]
    ) -> list[GeneratedTurn]: ...


class _TurnStopRecorder:
    """A stopping criterion that records where each row stopped: on a stop string or EOS, or at its own limit."""

    def __init__(self, criteria, prompt_length: int, row_limits: list[int], device):
        self.criteria = criteria
        self.prompt_length = prompt_length
        self.row_limits = torch.tensor(row_limits, device=device)
        self.stop_length = torch.full((len(row_limits),), -1, dtype=torch.long, device=device)
        self.stopped_on_tag = torch.zeros(len(row_limits), dtype=torch.bool, device=device)

    def __call__(self, input_ids, scores, **kwargs):
        generated = input_ids.shape[1] - self.prompt_length
        on_tag = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self.criteria:
            on_tag |= criterion(input_ids, scores)
        at_limit = self.row_limits <= generated
        done = on_tag | at_limit
        newly = done & (self.stop_length < 0)
        self.stop_length[newly] = generated
        self.stopped_on_tag |= newly & on_tag
        return done


class TransformersGenerator:
    """Per-turn generation with `transformers` `generate`, real stop strings and per-row token limits.

    Example:
        >>> from transformers import GenerationConfig
        >>> generator = TransformersGenerator(model, tokenizer, GenerationConfig(do_sample=False))  # doctest: +SKIP
        >>> generator.generate([tokenizer("Question:")["input_ids"]], [32], ["</search>", "</answer>"])  # doctest: +SKIP
    """

    def __init__(self, model, tokenizer, generation_config, eos_token_ids: Sequence[int] | None = None):
        from transformers.generation.stopping_criteria import EosTokenCriteria

        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = copy.deepcopy(generation_config)
        self.generation_config.stop_strings = None  # stop strings are handled by the recorder below
        if eos_token_ids is None:
            configured = self.generation_config.eos_token_id
            eos_token_ids = configured if isinstance(configured, list) else [configured or tokenizer.eos_token_id]
        self.eos_token_ids = list(eos_token_ids)
        self.generation_config.eos_token_id = self.eos_token_ids
        if self.generation_config.pad_token_id is None:
            self.generation_config.pad_token_id = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
            )
        self._eos_criterion = EosTokenCriteria(self.eos_token_ids)
        self._stop_criteria: dict[tuple[str, ...], object] = {}
        # Under DeepSpeed ZeRO-3 without a parameter gather (and FSDP), every forward pass is a collective: a rank
        # without work must still run generate, and `synced_gpus` keeps every rank stepping until all are done. With
        # gathered parameters the forward is local, and `synced_gpus` must be off: transformers turns it on under
        # ZeRO-3 by itself, and a busy rank would then wait in an all_reduce for a rank that has no work.
        self.collective_forward = False

    def _stop_string_criterion(self, stop_strings: Sequence[str]):
        from transformers.generation.stopping_criteria import StopStringCriteria

        key = tuple(stop_strings)
        if key not in self._stop_criteria:  # building the token tables is the costly part: do it once
            self._stop_criteria[key] = StopStringCriteria(tokenizer=self.tokenizer, stop_strings=list(key))
        return self._stop_criteria[key]

    @torch.no_grad()
    def generate(
        self, contexts: list[list[int]], max_new_tokens: list[int], stop_strings: Sequence[str]
    ) -> list[GeneratedTurn]:
        from transformers.generation.stopping_criteria import StoppingCriteriaList

        device = next(self.model.parameters()).device
        if not contexts:
            if self.collective_forward:
                dummy = torch.tensor([[self.generation_config.pad_token_id]], device=device)
                config = copy.deepcopy(self.generation_config)
                config.max_new_tokens = 1
                self.model.generate(
                    input_ids=dummy, attention_mask=torch.ones_like(dummy), generation_config=config, synced_gpus=True
                )
            return []
        width = max(len(ids) for ids in contexts)
        pad_id = self.generation_config.pad_token_id
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in contexts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in contexts], device=device)
        criteria = [self._eos_criterion]
        if stop_strings:
            criteria.append(self._stop_string_criterion(stop_strings))
        recorder = _TurnStopRecorder(criteria, width, list(max_new_tokens), device)
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens = max(max_new_tokens)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([recorder]),
            synced_gpus=self.collective_forward,
        )
        new_tokens = output[:, width:].tolist()
        stop_length = recorder.stop_length.tolist()
        stopped = recorder.stopped_on_tag.tolist()
        turns = []
        for row, tokens in enumerate(new_tokens):
            length = stop_length[row] if stop_length[row] >= 0 else min(len(tokens), max_new_tokens[row])
            turns.append(GeneratedTurn(token_ids=tokens[:length], logprobs=None, stopped=stopped[row]))
        return turns
