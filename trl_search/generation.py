"""Per-turn generation backends for the search rollout: what a backend must do (`TurnGenerator`) and the
transformers one. The vLLM backends live in `vllm_generation.py`.
"""

from __future__ import annotations

import copy
import warnings
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


@dataclass
class _CachedRow:
    """One row of the key/value cache kept from the last call: the tokens whose keys and values it holds."""

    tokens: list[int]  # the row's context and the turn it generated, as returned
    cached: int  # how many of `tokens` the cache holds (the last sampled token is never fed back)
    offset: int  # cache position of tokens[0] (the left padding before it)


class TransformersGenerator:
    """Per-turn generation with `transformers` `generate`, real stop strings and per-row token limits.

    With `reuse_cache=True` (the default), the key/value cache of one call is kept for the next: a context that
    extends a row of the previous call (the same turn's trajectory plus an observation) prefills only its new tokens
    instead of the whole context. Outputs are the same tokens either way. Call `release()` when the rollout ends to
    free the cache; assigning `model` (a new rollout, new weights) releases it too.

    Example:
        >>> from transformers import GenerationConfig
        >>> generator = TransformersGenerator(model, tokenizer, GenerationConfig(do_sample=False))  # doctest: +SKIP
        >>> generator.generate([tokenizer("Question:")["input_ids"]], [32], ["</search>", "</answer>"])  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        tokenizer,
        generation_config,
        eos_token_ids: Sequence[int] | None = None,
        reuse_cache: bool = True,
    ):
        from transformers.generation.stopping_criteria import EosTokenCriteria

        self._cache = None
        self._cached_rows: list[_CachedRow] = []
        self.model = model
        self.reuse_cache = reuse_cache
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

    @property
    def model(self):
        return self._model

    @model.setter
    def model(self, model) -> None:
        self.release()  # a cache computed with other weights must never be reused
        self._model = model

    def release(self) -> None:
        """Frees the key/value cache kept for the next turn."""
        self._cache = None
        self._cached_rows = []

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
        cache = self._reusable_cache(contexts, width) if self.reuse_cache else None
        if cache is None and self.reuse_cache:
            cache = self._new_cache()
        self.release()
        criteria = [self._eos_criterion]
        if stop_strings:
            criteria.append(self._stop_string_criterion(stop_strings))
        recorder = _TurnStopRecorder(criteria, width, list(max_new_tokens), device)
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens = max(max_new_tokens)
        with warnings.catch_warnings():
            # newer transformers call it `cache`; `past_key_values` works in every 5.x release
            warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([recorder]),
                synced_gpus=self.collective_forward,
                # Positions count real tokens only, so a row's positions do not depend on its left padding, which
                # changes from turn to turn: keys kept in the cache stay valid where the row's tokens move.
                position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
                **({"past_key_values": cache} if cache is not None else {}),
            )
        new_tokens = output[:, width:].tolist()
        stop_length = recorder.stop_length.tolist()
        stopped = recorder.stopped_on_tag.tolist()
        turns = []
        for row, tokens in enumerate(new_tokens):
            length = stop_length[row] if stop_length[row] >= 0 else min(len(tokens), max_new_tokens[row])
            turns.append(GeneratedTurn(token_ids=tokens[:length], logprobs=None, stopped=stopped[row]))
        if cache is not None:
            self._keep_cache(cache, contexts, turns, width)
        return turns

    # --- key/value cache reuse across turns ---------------------------------------------------------------------
    # Left padding is masked out and the position ids we pass count only real tokens, so a row's cached keys and
    # values can move to another column (to line up with the next call's left padding) without being recomputed.

    def _new_cache(self):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        # Only plain full-attention layers can be cut and moved row by row.
        if any(getattr(cache, "is_sliding", [False])) or any(getattr(cache, "is_linear", [False])):
            return None
        return cache

    def _keep_cache(self, cache, contexts: list[list[int]], turns: list[GeneratedTurn], width: int) -> None:
        positions = cache.get_seq_length()
        if positions == 0 or any(layer.keys is None for layer in cache.layers):
            return
        self._cache = cache
        self._cached_rows = [
            _CachedRow(
                tokens=ids + turn.token_ids,
                cached=min(len(ids) + len(turn.token_ids), len(ids) + positions - width),
                offset=width - len(ids),
            )
            for ids, turn in zip(contexts, turns)
        ]

    def _match_rows(self, contexts: list[list[int]]) -> list[tuple[int, int]] | None:
        """For each context, (cached row, tokens reusable), in order: the rollout keeps its samples' order and drops
        finished ones. None if some context extends no cached row."""
        matches, row = [], 0
        for ids in contexts:
            while row < len(self._cached_rows):
                cached = self._cached_rows[row]
                reusable = min(cached.cached, len(ids) - 1)  # keep one token to feed: it yields the next logits
                if reusable > 0 and ids[:reusable] == cached.tokens[:reusable]:
                    matches.append((row, reusable))
                    row += 1
                    break
                row += 1
            else:
                return None
        return matches

    def _reusable_cache(self, contexts: list[list[int]], width: int):
        """The last call's cache rearranged for these contexts, or None when it cannot serve them."""
        if self._cache is None:
            return None
        matches = self._match_rows(contexts)
        if matches is None:
            return None
        # Positions below `common` hold, in every row, padding or reused tokens: they come from the old cache.
        common = min(width - len(ids) + reusable for ids, (_, reusable) in zip(contexts, matches))
        if common <= 0:
            return None
        from transformers import DynamicCache

        old = self._cache.layers[0].keys
        rows = torch.tensor([row for row, _ in matches], device=old.device)
        index = torch.empty((len(contexts), common), dtype=torch.long)
        for i, (ids, (row, _)) in enumerate(zip(contexts, matches)):
            pad = width - len(ids)
            # padded positions take any old position (masked out); the others their token's old position
            index[i] = torch.clamp(torch.arange(common) - pad, min=0) + self._cached_rows[row].offset
        index = index.to(old.device)

        def move(tensor):
            selected = tensor.index_select(0, rows)
            heads, dim = selected.shape[1], selected.shape[3]
            return torch.gather(selected, 2, index[:, None, :, None].expand(-1, heads, -1, dim))

        return DynamicCache(
            ddp_cache_data=[(move(layer.keys), move(layer.values)) for layer in self._cache.layers],
            config=self.model.config,
        )
