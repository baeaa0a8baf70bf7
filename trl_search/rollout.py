"""The batched multi-turn search rollout, independent of the trainer so that evaluation runs the same code.

One turn: every still-active sample generates until `</search>`, `</answer>`, EOS or its token limit; all queries of
the turn go to the retriever in one call; the passages come back as an observation appended to the sample's
completion with mask 0 (injected), while sampled tokens carry mask 1.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .generation import TurnGenerator
from .protocols import Action, get_protocol
from .retrievers.base import Passage, Retriever
from .rewards import contains_answer


@dataclass
class SampleTrajectory:
    """One sample's multi-turn completion and what happened in it."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)  # 1 = sampled by the policy, 0 = injected
    logprobs: list[float] | None = field(default_factory=list)
    num_searches: int = 0
    queries: list[str] = field(default_factory=list)
    retrieved_texts: list[str] = field(default_factory=list)
    num_invalid: int = 0
    num_turns: int = 0
    answered: bool = False
    # The answer the rollout executed: the content of the `<answer>` that ended the sample (None if it never answered).
    # Rewards and evaluation score exactly this, never a span that runs into injected text.
    predicted_answer: str | None = None
    answer_in_retrieval: bool | None = None
    # answer | eos | search_limit | invalid | truncated; "" while active
    stop_reason: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.stop_reason)

    def extend(self, token_ids: list[int], mask_value: int, logprobs: list[float] | None = None) -> None:
        """Appends tokens. Sampled tokens come with their sampling logprobs; injected ones get NaN, which TRL reads as
        "no sampling logprob" (importance ratio 1, no off-policy evidence) rather than a fake certainty of 0.0."""
        if logprobs is not None and len(logprobs) != len(token_ids):
            raise RuntimeError(
                f"The generation backend returned {len(logprobs)} logprobs for {len(token_ids)} tokens in one turn; "
                "they must match one to one (a shifted logprob would correct the wrong token)."
            )
        self.completion_ids.extend(token_ids)
        self.env_mask.extend([mask_value] * len(token_ids))
        if self.logprobs is not None:
            self.logprobs.extend(logprobs if logprobs is not None else [float("nan")] * len(token_ids))


@dataclass
class RolloutOutput:
    samples: list[SampleTrajectory]
    retriever_seconds: float = 0.0
    retriever_calls: int = 0
    queries_sent: int = 0  # unique queries sent to the retriever, over all calls
    turns: int = 0

    def statistic_sums(self) -> dict[str, float]:
        """Per-batch sums of what the rollout did, by name; `rollout_metrics` turns them (summed over ranks, or over a
        dataset) into the trainer's `search/*` metrics and the evaluation's summary.

        Example:
            >>> sample = SampleTrajectory(prompt_ids=[1], completion_ids=[5, 6], env_mask=[1, 0])
            >>> RolloutOutput(samples=[sample]).statistic_sums()["injected_tokens"]
            1.0
        """
        samples = self.samples
        return {
            "samples": float(len(samples)),
            "searches": float(sum(sample.num_searches for sample in samples)),
            "invalid_actions": float(sum(sample.num_invalid for sample in samples)),
            "turns": float(sum(sample.num_turns for sample in samples)),
            "answered": float(sum(sample.answered for sample in samples)),
            "injected_tokens": float(sum(len(sample.env_mask) - sum(sample.env_mask) for sample in samples)),
            "completion_tokens": float(sum(len(sample.env_mask) for sample in samples)),
            "answer_in_retrieval": float(sum(bool(sample.answer_in_retrieval) for sample in samples)),
            "with_golden_answers": float(sum(sample.answer_in_retrieval is not None for sample in samples)),
        }


def rollout_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Named ratios of `RolloutOutput.statistic_sums()`: the one vocabulary of rollout statistics, logged by the
    trainer as `search/<name>` and reported per dataset by `trl_search.evaluation.evaluate` as `<name>`.

    - `searches_per_sample`: search turns per sample;
    - `turns_per_sample`: generation turns per sample;
    - `invalid_action_rate`: invalid actions over turns (turns whose action could not be run);
    - `answered_ratio`: share of samples that ended with an answer;
    - `masked_token_ratio`: share of completion tokens injected by the environment (masked out of the loss);
    - `answer_retrieved_ratio`: share of samples with golden answers whose gold answer appeared in a retrieved
      passage; absent when no sample has golden answers.

    Sums may come from several batches or ranks added key by key. A sample is one completion in training and one
    question's trajectory in evaluation.

    Example:
        >>> sample = SampleTrajectory(prompt_ids=[1], completion_ids=[5, 6, 7, 8], env_mask=[1, 0, 0, 1], num_searches=1,
        ...                           num_turns=2, answered=True, answer_in_retrieval=True)
        >>> sums = RolloutOutput(samples=[sample, SampleTrajectory(prompt_ids=[1], num_turns=1)]).statistic_sums()
        >>> rollout_metrics(sums)  # doctest: +NORMALIZE_WHITESPACE
        {'searches_per_sample': 0.5, 'turns_per_sample': 1.5, 'invalid_action_rate': 0.0, 'answered_ratio': 0.5,
         'masked_token_ratio': 0.5, 'answer_retrieved_ratio': 1.0}
    """
    count = max(sums["samples"], 1)
    metrics = {
        "searches_per_sample": sums["searches"] / count,
        "turns_per_sample": sums["turns"] / count,
        "invalid_action_rate": sums["invalid_actions"] / max(sums["turns"], 1),
        "answered_ratio": sums["answered"] / count,
        "masked_token_ratio": sums["injected_tokens"] / max(sums["completion_tokens"], 1),
    }
    if sums["with_golden_answers"]:
        metrics["answer_retrieved_ratio"] = sums["answer_in_retrieval"] / sums["with_golden_answers"]
    return metrics


@dataclass(frozen=True)
class RolloutSettings:
    """Everything that shapes a search rollout, with the paper's defaults, validated once. Training
    (`SearchGRPOConfig`), evaluation and `search_config.json` all speak it.

    Example:
        >>> RolloutSettings(max_turns=2).retrieval_top_k
        3
        >>> RolloutSettings.merged({"max_turns": 2, "top_k": 9}, {"max_turns": None, "retrieval_top_k": 5}).max_turns
        2
    """

    protocol: str = "tags"
    observation_format: str = "search_r1"
    max_turns: int = 4
    retrieval_top_k: int = 3
    max_obs_length: int = 500
    max_tokens_per_turn: int = 500
    max_completion_length: int = 2048
    mask_retrieved_tokens: bool = True

    def __post_init__(self):
        from .protocols import PROTOCOLS, TagsProtocol

        checks = [
            (self.protocol in PROTOCOLS, f"Unknown search_protocol {self.protocol!r}; set --search_protocol to one of "
             f"{sorted(PROTOCOLS)}."),
            (self.observation_format in TagsProtocol.OBSERVATION_FORMATS, f"Unknown observation_format "
             f"{self.observation_format!r}; choose one of {list(TagsProtocol.OBSERVATION_FORMATS)}."),
            (self.max_turns >= 0, f"max_turns must be >= 0 (0 disables searching), got {self.max_turns}. Set "
             "--max_turns."),
            (self.retrieval_top_k >= 1, f"retrieval_top_k is the number of passages per search and must be >= 1, got "
             f"{self.retrieval_top_k}. Set --retrieval_top_k."),
            (self.max_obs_length >= 1, f"max_obs_length must be >= 1, got {self.max_obs_length} (the paper uses "
             "500). Set --max_obs_length."),
            (self.max_tokens_per_turn >= 1, f"max_tokens_per_turn must be >= 1, got {self.max_tokens_per_turn}."),
            (self.max_completion_length >= 2, f"max_completion_length={self.max_completion_length} leaves no room for "
             "one generated token and the final EOS; set it to at least 2."),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def merged(cls, *layers: dict | None) -> RolloutSettings:
        """Defaults, then each layer in turn (e.g. saved settings, then explicit ones); None values and unknown keys
        are skipped, so a `search_config.json` or a function's keyword arguments can be passed as they are."""
        values = {}
        for layer in layers:
            for key, value in (layer or {}).items():
                if key in cls.__dataclass_fields__ and value is not None:
                    values[key] = value
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SearchRollout:
    """Runs the multi-turn search loop for a batch of tokenised prompts.

    Args:
        retriever: any `Retriever`; it receives one `search` call per turn with the turn's unique queries.
        tokenizer: the policy's tokenizer (to read actions and tokenise observations).
        settings: the `RolloutSettings` (paper defaults if None); keyword `overrides` replace single fields.
        eos_token_id: appended (with mask 0) to a sample that finished on a stop string, so that it is not counted as
            truncated. Defaults to the tokenizer's EOS.
        chat_template, chat_template_kwargs: for `protocol="tool_call"`, the template that renders tool messages (the
            one the prompts were rendered with).

    Example:
        >>> rollout = SearchRollout(retriever, tokenizer, max_turns=2, max_completion_length=512)  # doctest: +SKIP
        >>> output = rollout.run(prompt_ids, TransformersGenerator(model, tokenizer, config))  # doctest: +SKIP
        >>> output.samples[0].num_searches  # doctest: +SKIP
        1
    """

    def __init__(
        self,
        retriever: Retriever,
        tokenizer,
        settings: RolloutSettings | None = None,
        *,
        eos_token_id: int | None = None,
        chat_template: str | None = None,
        chat_template_kwargs: dict | None = None,
        **overrides,
    ):
        settings = dataclasses.replace(settings or RolloutSettings(), **overrides)
        if settings.max_turns > 0 and retriever is None:
            raise ValueError("A retriever is required when max_turns > 0 (set max_turns=0 for no search).")
        self.settings = settings
        self.retriever = retriever
        self.tokenizer = tokenizer
        self.protocol = get_protocol(
            settings.protocol,
            tokenizer=tokenizer,
            observation_format=settings.observation_format,
            chat_template=chat_template,
            chat_template_kwargs=chat_template_kwargs,
        )
        self.max_turns = settings.max_turns
        self.retrieval_top_k = settings.retrieval_top_k
        self.max_obs_length = settings.max_obs_length
        self.max_tokens_per_turn = settings.max_tokens_per_turn
        self.max_completion_length = settings.max_completion_length
        self.observation_mask = 0 if settings.mask_retrieved_tokens else 1
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if self.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token: pass eos_token_id to SearchRollout.")
        self._eos_ids = {self.eos_token_id}

    def run(
        self,
        prompt_ids: list[list[int]],
        generator: TurnGenerator,
        golden_answers: Sequence[Sequence[str] | None] | None = None,
        any_active: Callable[[bool], bool] | None = None,
        with_logprobs: bool = False,
    ) -> RolloutOutput:
        """Rolls out every prompt to completion.

        `any_active(local_active)` makes ranks agree on whether anyone still has work (so that every rank runs the
        same number of turns); by default only the local batch counts.
        """
        samples = [
            SampleTrajectory(prompt_ids=list(ids), logprobs=[] if with_logprobs else None) for ids in prompt_ids
        ]
        golds_of = self._golds_by_sample(samples, golden_answers)
        for sample in samples:
            if golds_of[id(sample)] is not None:
                sample.answer_in_retrieval = False  # until a retrieved passage shows a gold answer
        eos_ids = set(getattr(generator, "eos_token_ids", None) or [self.eos_token_id])
        self._eos_ids = eos_ids | {self.eos_token_id}
        output = RolloutOutput(samples=samples)
        for turn in range(self.max_turns + 1):
            can_search = turn < self.max_turns
            active = [sample for sample in samples if not sample.finished]
            if not (any_active(bool(active)) if any_active is not None else bool(active)):
                break
            output.turns += 1
            budgets = [self._room(sample) - 1 for sample in active]  # keep one token for the EOS we may append
            for sample, budget in zip(active, budgets):
                if budget < 1:
                    sample.stop_reason = "truncated"
            runnable = [(sample, budget) for sample, budget in zip(active, budgets) if budget >= 1]
            limits = [min(self.max_tokens_per_turn, budget) for _, budget in runnable]
            generated = generator.generate(
                [sample.prompt_ids + sample.completion_ids for sample, _ in runnable],
                limits,
                self.protocol.stop_strings,
            )
            pending_searches: list[tuple[SampleTrajectory, tuple[str, ...]]] = []
            pending_feedback: list[tuple[SampleTrajectory, str]] = []
            for (sample, budget), limit, turn_output in zip(runnable, limits, generated):
                # the tail the tool-call parser needs, without copying the whole context every turn
                context_tail = (sample.prompt_ids[-64:] + sample.completion_ids[-64:])[-64:]
                if turn_output.logprobs is None:
                    sample.logprobs = None
                sample.extend(turn_output.token_ids, 1, turn_output.logprobs)
                sample.num_turns += 1
                ended_with_eos = bool(turn_output.token_ids) and turn_output.token_ids[-1] in eos_ids
                text = self.tokenizer.decode(turn_output.token_ids, skip_special_tokens=True)
                out_of_budget = not turn_output.stopped and limit == budget
                action = self.protocol.parse_turn(
                    turn_output.token_ids, text, ended_with_eos, out_of_budget, context_ids=context_tail
                )
                self._apply_action(sample, action, can_search, turn_output.stopped, pending_searches, pending_feedback)
            self._answer_searches(pending_searches, golds_of, output)
            for sample, error in pending_feedback:
                self._inject_feedback(sample, error)
        for sample in samples:
            if not sample.finished:  # only reachable if a rank kept looping for others: nothing left to do
                sample.stop_reason = "truncated"
            if not sample.completion_ids:  # TRL needs a non-empty completion
                sample.extend([self.eos_token_id], 0)
        return output

    def _room(self, sample: SampleTrajectory) -> int:
        return self.max_completion_length - len(sample.completion_ids)

    def _finish(self, sample: SampleTrajectory, reason: str) -> None:
        """Ends a sample. TRL counts a completion as terminated exactly when it ends with EOS, so a sample that
        stopped on a tag gets one (injected, never trained) and a truncated one never does."""
        sample.stop_reason = reason
        if reason != "truncated" and not (sample.completion_ids and sample.completion_ids[-1] in self._eos_ids):
            sample.extend([self.eos_token_id], 0)

    def _apply_action(self, sample, action: Action, can_search, stopped, pending_searches, pending_feedback) -> None:
        if action.kind == "answer":
            sample.answered = True
            sample.predicted_answer = action.content
            self._finish(sample, "answer")
        elif action.kind == "eos":
            sample.stop_reason = "eos"  # the policy's own EOS ends the completion already
        elif action.kind == "truncated":
            sample.stop_reason = "truncated"
        elif action.kind == "search" and can_search:
            sample.num_searches += 1  # a search turn (its queries run in parallel)
            sample.queries.extend(action.queries)
            pending_searches.append((sample, action.queries))
        elif action.kind == "search":
            self._finish(sample, "search_limit")
        else:  # invalid: a malformed tag, or a turn that ran out of per-turn tokens without acting
            sample.num_invalid += 1
            if can_search:
                pending_feedback.append((sample, action.error))
            else:
                self._finish(sample, "invalid" if stopped else "truncated")

    def _answer_searches(self, pending, golds_of, output: RolloutOutput) -> None:
        # A collective retriever (queries gathered across ranks) is called every turn, even with nothing to ask.
        collective = getattr(self.retriever, "is_collective", False)
        if not pending and not collective:
            return
        unique_queries = list(dict.fromkeys(query for _, queries in pending for query in queries))  # groups repeat
        start = time.perf_counter()
        results = self.retriever.search(unique_queries, k=self.retrieval_top_k)
        output.retriever_seconds += time.perf_counter() - start
        if not pending:
            return
        output.retriever_calls += 1
        output.queries_sent += len(unique_queries)
        _check_results(self.retriever, results, len(unique_queries))
        # Render and tokenise each distinct result once, in one batched call: per-sample tokenizer calls dominated
        # the rollout's own cost (benchmarks/bench_rollout_overhead.py).
        contents = [self.protocol.render_content(list(passages)[: self.retrieval_top_k]) for passages in results]
        distinct = list(dict.fromkeys(contents))  # paraphrased queries often retrieve the same passages
        # split_special_tokens: `<|im_end|>` or `<|endoftext|>` written in a web page stays ordinary text, never a forged
        # turn boundary or EOS inside the observation.
        encoded = self.tokenizer(distinct, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids_of = dict(zip(distinct, encoded))
        content_of = {query: (text, ids_of[text]) for query, text in zip(unique_queries, contents)}
        for sample, queries in pending:
            seen_texts = self._inject(sample, [content_of[query] for query in queries])
            sample.retrieved_texts.extend(seen_texts)
            sample_golds = golds_of[id(sample)]
            if seen_texts and sample_golds is not None:
                found = contains_answer(seen_texts, sample_golds)
                sample.answer_in_retrieval = sample.answer_in_retrieval or found

    def _inject_feedback(self, sample: SampleTrajectory, error: str) -> None:
        """Appends the invalid-action feedback, or ends the sample as truncated if it no longer fits."""
        feedback = self.protocol.feedback_ids(error)
        if len(feedback) > self._room(sample) - 2:
            sample.stop_reason = "truncated"
        else:
            sample.extend(feedback, self.observation_mask)

    def _inject(self, sample: SampleTrajectory, contents: list[tuple[str, list[int]]]) -> list[str]:
        """Appends one observation holding `contents` (one per query) in the protocol's frame, cut to fit
        `max_obs_length` and the budget with the frame's closing markup kept; returns the texts as the policy sees
        them (none if nothing fits: the sample then ends as truncated)."""
        frame = self.protocol.frame(len(contents))
        room = self._room(sample) - 2  # leave room for at least one generated token and the final EOS
        content_room = min(self.max_obs_length, room) - sum(len(piece) for piece in frame)
        if content_room < len(contents):
            sample.stop_reason = "truncated"  # no room left to show the passages
            return []
        caps = _share(content_room, [len(ids) for _, ids in contents])
        ids, seen = list(frame[0]), []
        for (text, content_ids), cap, piece in zip(contents, caps, frame[1:]):
            if len(content_ids) > cap:
                content_ids = content_ids[:cap]
                text = self.tokenizer.decode(content_ids, skip_special_tokens=True)
            ids += content_ids + piece
            seen.append(text)
        sample.extend(ids, self.observation_mask)
        return seen

    @staticmethod
    def _golds_by_sample(samples, golden_answers) -> dict[int, Sequence[str] | None]:
        if golden_answers is None:
            return {id(sample): None for sample in samples}
        if len(golden_answers) != len(samples):
            raise ValueError(f"golden_answers has {len(golden_answers)} entries for {len(samples)} prompts.")
        return {id(sample): golds for sample, golds in zip(samples, golden_answers)}


def _check_results(retriever, results, num_queries: int) -> None:
    """Fails early, naming the retriever, when `search` breaks its contract (one list of `Passage`s per query)."""
    name = type(retriever).__name__
    if not isinstance(results, (list, tuple)) or len(results) != num_queries:
        got = f"{len(results)} result lists" if isinstance(results, (list, tuple)) else repr(results)[:80]
        raise RuntimeError(
            f"{name}.search returned {got} for {num_queries} queries; a retriever must return exactly one list of "
            "Passage objects per query."
        )
    for hits in results:
        if not isinstance(hits, (list, tuple)) or not all(isinstance(hit, Passage) for hit in hits):
            raise TypeError(
                f"{name}.search must return lists of trl_search.retrievers.Passage, got {hits!r:.120}. Wrap raw texts "
                "as Passage(id=..., title=..., text=...) or Passage.from_contents(id, contents)."
            )


def _share(room: int, lengths: list[int]) -> list[int]:
    """Splits `room` tokens among contents of `lengths`: short ones keep everything, long ones share the rest equally.

    Example:
        >>> _share(10, [2, 30, 30])
        [2, 4, 4]
    """
    caps = [0] * len(lengths)
    remaining = room
    for position, index in enumerate(sorted(range(len(lengths)), key=lengths.__getitem__)):
        caps[index] = min(lengths[index], remaining // (len(lengths) - position))
        remaining -= caps[index]
    return caps
