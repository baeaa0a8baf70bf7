"""vLLM backends of the search rollout: per-turn generation on TRL's vLLM engine, in colocate or server mode.

TRL builds the engine (`trainer.vllm_generation`, a `trl.generation.vllm_generation.VLLMGeneration`) and syncs the
policy's weights into it before every rollout; these backends only replace its single-shot `generate` with one call
per turn that stops on the protocol's stop strings (`stop=[...]`, `include_stop_str_in_output=True`), honours a token
limit per row, and returns the sampling logprob of every generated token.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

from ._trl_compat import extract_logprobs, put_engine_to_sleep, sampling_settings, wake_engine
from .generation import GeneratedTurn


def group_identical_rows(rows: Sequence[tuple[Sequence[int], int]]) -> list[list[int]]:
    """Indices of rows that share both their context and their token limit, in first-seen order.

    Each group goes to vLLM as ONE prompt with `n` = its size, as TRL sends a GRPO group: vLLM then draws `n`
    different samples (with a `seed` in `generation_kwargs`, it seeds sample i with seed + i). Sent as separate
    `n=1` requests with the same seed, identical contexts (every first turn of a group, and later turns whose
    histories coincide) would all get the same completion. It also prefills each distinct context once.

    Example:
        >>> group_identical_rows([([1, 2], 8), ([1, 2], 8), ([3], 8), ([1, 2], 4)])
        [[0, 1], [2], [3]]
    """
    groups: dict[tuple, list[int]] = {}
    for index, (context, limit) in enumerate(rows):
        groups.setdefault((tuple(context), limit), []).append(index)
    return list(groups.values())


def _sampled_logprob(step_logprobs, step_token_ids, token: int) -> float:
    """The logprob of the sampled token among a position's top logprobs (NaN, as TRL maps vLLM's None, if absent)."""
    for candidate, logprob in zip(step_token_ids, step_logprobs):
        if candidate == token:
            return float("nan") if logprob is None else logprob
    return float("nan")


class VLLMColocateGenerator:
    """`TurnGenerator` on the vLLM engine that lives in the training process (`vllm_mode="colocate"`).

    One `LLM.generate` call per turn with one `SamplingParams` per row (its own `max_tokens`). With tensor parallelism,
    the ranks of a TP group gather their rows, generate the same batch, and keep their own slice, as TRL does.

    Args:
        llm: the `vllm.LLM` that TRL built (`trainer.vllm_generation.llm`).
        sampling: sampling parameters (see `sampling_settings`).
        eos_token_ids: tokens that end a sample.
        tp_group: the tensor-parallel process group, if `vllm_tensor_parallel_size > 1`.

    Example:
        >>> generator = VLLMColocateGenerator(trainer.vllm_generation.llm, {"temperature": 1.0}, [tokenizer.eos_token_id])  # doctest: +SKIP
        >>> generator.generate([prompt_ids], [500], ["</search>", "</answer>"])  # doctest: +SKIP
    """

    def __init__(self, llm, sampling: dict, eos_token_ids: Sequence[int], tp_group=None):
        self.llm = llm
        self.sampling = dict(sampling)
        self.eos_token_ids = list(eos_token_ids)
        self.tp_group = tp_group

    def _sampling_params(self, max_tokens: int, n: int, stop_strings: Sequence[str]):
        from vllm import SamplingParams

        return SamplingParams(
            **{**self.sampling, "n": n, "max_tokens": max_tokens},
            stop=list(stop_strings),
            include_stop_str_in_output=True,  # the policy wrote the tag: it stays in the trained completion
        )

    def generate(
        self, contexts: list[list[int]], max_new_tokens: list[int], stop_strings: Sequence[str]
    ) -> list[GeneratedTurn]:
        rows = list(zip(contexts, max_new_tokens))
        if self.tp_group is not None:  # the TP group generates one batch: gather the rows of its ranks
            import torch.distributed as dist

            gathered = [None] * dist.get_world_size(group=self.tp_group)
            dist.all_gather_object(gathered, rows, group=self.tp_group)
            start = sum(len(part) for part in gathered[: dist.get_rank(group=self.tp_group)])
            rows = [row for part in gathered for row in part]
        else:
            start = 0
        if not rows:
            return []
        groups = group_identical_rows(rows)
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(rows[group[0]][0])} for group in groups],
            sampling_params=[self._sampling_params(rows[group[0]][1], len(group), stop_strings) for group in groups],
            use_tqdm=False,
        )
        # TRL's reading of vLLM's per-position logprobs: one entry per completion, request-major
        all_logprobs, all_token_ids = extract_logprobs(outputs)
        turns: list[GeneratedTurn | None] = [None] * len(rows)
        flat = 0
        for group, request in zip(groups, outputs):
            for index, completion in zip(group, request.outputs, strict=True):
                token_ids = list(completion.token_ids)
                logprobs = None
                if all_logprobs is not None:
                    logprobs = [
                        _sampled_logprob(step, step_ids, token)
                        for step, step_ids, token in zip(all_logprobs[flat], all_token_ids[flat], token_ids)
                    ]
                flat += 1
                # finish_reason "stop": EOS or a stop string; "length": max_tokens reached
                turns[index] = GeneratedTurn(token_ids, logprobs, stopped=completion.finish_reason == "stop")
        return turns[start : start + len(contexts)]

    @contextmanager
    def session(self, vllm_generation=None):
        """Wakes a sleeping engine for the whole rollout (all turns) and puts it back to sleep after, as TRL's
        `VLLMGeneration.generate` does around its single call."""
        sleeping = wake_engine(vllm_generation)
        try:
            yield self
        finally:
            if sleeping:
                put_engine_to_sleep(vllm_generation)


class VLLMServerGenerator:
    """`TurnGenerator` on a vLLM server (`vllm_mode="server"`, started with `trl vllm-serve`).

    Every turn, the rows of all ranks are gathered to the main process, which sends them to the server (one request
    per distinct token limit, since a request has one `max_tokens`), then broadcasts the turns back; each rank keeps
    its own slice by the gathered offsets. It is a collective: every rank calls it every turn, with or without rows.

    Args:
        client: TRL's `VLLMClient` (`trainer.vllm_generation.vllm_client`; only the main process has one).
        sampling: sampling parameters (see `sampling_settings`).
        tokenizer: the policy's tokenizer (the server does not say whether a stop string ended the turn).
        eos_token_ids: tokens that end a sample.
        accelerator: the trainer's `Accelerator` (for the gather and the broadcast).

    Example:
        >>> generator = VLLMServerGenerator(client, {"temperature": 1.0}, tokenizer, [tokenizer.eos_token_id], accelerator)  # doctest: +SKIP
        >>> generator.generate([prompt_ids], [500], ["</search>", "</answer>"])  # doctest: +SKIP
    """

    def __init__(self, client, sampling: dict, tokenizer, eos_token_ids: Sequence[int], accelerator):
        self.client = client
        self.sampling = dict(sampling)
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        self.accelerator = accelerator

    def generate(
        self, contexts: list[list[int]], max_new_tokens: list[int], stop_strings: Sequence[str]
    ) -> list[GeneratedTurn]:
        from accelerate.utils import broadcast_object_list, gather_object

        per_rank = gather_object([list(zip(contexts, max_new_tokens))])
        start = sum(len(part) for part in per_rank[: self.accelerator.process_index])
        rows = [row for part in per_rank for row in part]
        payload = [self._generate_rows(rows, stop_strings) if self.accelerator.is_main_process else None]
        broadcast_object_list(payload, from_process=0)
        return payload[0][start : start + len(contexts)]

    def _generate_rows(self, rows: list[tuple[list[int], int]], stop_strings: Sequence[str]) -> list[GeneratedTurn]:
        turns: list[GeneratedTurn | None] = [None] * len(rows)
        # One request per (token limit, group size): a request has one `max_tokens` and one `n`.
        requests: dict[tuple[int, int], list[list[int]]] = {}
        for group in group_identical_rows(rows):
            requests.setdefault((rows[group[0]][1], len(group)), []).append(group)
        settings = dict(self.sampling)
        named = {
            key: settings.pop(key)
            for key in ("repetition_penalty", "temperature", "top_p", "top_k", "min_p")
            if key in settings
        }
        logprobs = settings.pop("logprobs", 0)
        # Anything else (seed, ..., and the stop strings) goes in the request body as-is.
        extra = {**settings, "stop": list(stop_strings), "include_stop_str_in_output": True}
        for (limit, n), groups in requests.items():
            output = self.client.generate(
                prompts=[list(rows[group[0]][0]) for group in groups],
                n=n,
                max_tokens=limit,
                logprobs=logprobs,
                generation_kwargs=extra,
                **named,
            )
            all_logprobs, all_token_ids = output["logprobs"], output.get("logprob_token_ids")
            # completions come prompt-major: the n samples of a prompt, then the next prompt's
            for position, index in enumerate(index for group in groups for index in group):
                token_ids = list(output["completion_ids"][position])
                turn_logprobs = None
                if all_logprobs is not None:
                    steps = all_logprobs[position]
                    ids = all_token_ids[position] if all_token_ids is not None else [[t] for t in token_ids]
                    turn_logprobs = [
                        _sampled_logprob(step, step_ids, token) for step, step_ids, token in zip(steps, ids, token_ids)
                    ]
                turns[index] = GeneratedTurn(
                    token_ids=token_ids, logprobs=turn_logprobs, stopped=self._stopped(token_ids, limit, stop_strings)
                )
        return turns

    def _stopped(self, token_ids: list[int], limit: int, stop_strings: Sequence[str]) -> bool:
        # The completions endpoint's finish_reason does not reach TRL's client: infer it. Generation ends at the first
        # stop string, so any stop string in the turn's text means it ended there.
        if len(token_ids) < limit or (token_ids and token_ids[-1] in self.eos_token_ids):
            return True
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        return any(stop in text for stop in stop_strings)

    @contextmanager
    def session(self, vllm_generation=None):
        yield self


def make_vllm_generator(vllm_generation, tokenizer, eos_token_ids: Sequence[int]):
    """Builds the turn generator matching TRL's vLLM engine (`trainer.vllm_generation`) and its mode.

    Example:
        >>> generator = make_vllm_generator(trainer.vllm_generation, tokenizer, trainer.eos_token_ids)  # doctest: +SKIP
    """
    sampling = sampling_settings(vllm_generation)
    if vllm_generation.mode == "server":
        return VLLMServerGenerator(
            getattr(vllm_generation, "vllm_client", None),
            sampling,
            tokenizer,
            eos_token_ids,
            vllm_generation.accelerator,
        )
    if vllm_generation.mode == "colocate":
        tp_group = getattr(vllm_generation, "tp_group", None) if vllm_generation.tensor_parallel_size > 1 else None
        return VLLMColocateGenerator(vllm_generation.llm, sampling, eos_token_ids, tp_group=tp_group)
    raise ValueError(f"vllm_mode must be 'colocate' or 'server', got {vllm_generation.mode!r}.")
