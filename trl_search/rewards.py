"""Reward functions for search-augmented QA, in TRL's reward-function form.

Each takes `completions` (plain strings, or TRL's conversational form: a list of messages per completion) and
`golden_answers` (one list of strings per completion), ignores other keyword arguments, and returns `list[float]`.
They are plain module-level functions (or, for `get_format_reward`, instances of a module-level class), so they
pickle for multi-process data loading.

The answer scored is the one the rollout executed: `SearchGRPOTrainer` passes it to every reward function as the
`predicted_answer` column (None for a sample that never answered), and the rewards here score exactly that. Called on
text alone (no such column), they read it with `trl_search.protocols.extract_answer`: the last `<answer>` block of the
completion (never of the prompt), and never a span that runs into injected text. Retrieved passages reach the
completion with their tags neutralised (`&lt;answer&gt;`), so text copied from a passage never counts as an answer.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from .protocols import INFORMATION_BLOCK, extract_answer, is_valid_sequence


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop the articles a/an/the, collapse white space.

    Example:
        >>> normalize_answer("  The  Eiffel-Tower! ")
        'eiffeltower'
    """
    text = text.lower()
    text = "".join(char for char in text if char not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def completion_text(completion) -> str:
    """The text of a completion given as a string or as a list of chat messages (their contents joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        parts = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):  # typed content blocks
                content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
            parts.append(str(content))
        return "".join(parts)
    raise TypeError(f"A completion must be a string or a list of messages, got {type(completion).__name__}.")


def _as_answer_list(golden) -> list[str]:
    if golden is None:
        return []
    if isinstance(golden, str):
        return [golden]
    return [str(answer) for answer in golden]


def predicted_answers(completions, predicted_answer=None) -> list[str | None]:
    """The answer of each completion: the rollout's own record when given (`predicted_answer`, one entry per
    completion), else read from the text with `extract_answer`.

    Example:
        >>> predicted_answers(["<answer>Paris</answer>", "no answer"])
        ['Paris', None]
        >>> predicted_answers(["<answer>Paris</answer>"], predicted_answer=["Lyon"])
        ['Lyon']
    """
    if predicted_answer is None:
        return [extract_answer(completion_text(completion)) for completion in completions]
    if len(predicted_answer) != len(completions):
        raise ValueError(f"predicted_answer has {len(predicted_answer)} entries for {len(completions)} completions.")
    return list(predicted_answer)


def _f1(prediction: str, gold: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_reward(completions, golden_answers, predicted_answer=None, **kwargs) -> list[float]:
    """1.0 when the last `<answer>` of the completion equals any gold answer after `normalize_answer`, else 0.0.

    Example:
        >>> exact_match_reward(["<answer>The Beatles</answer>"], [["Beatles", "Fab Four"]])
        [1.0]
        >>> exact_match_reward([[{"role": "assistant", "content": "no answer tag"}]], [["x"]])
        [0.0]
    """
    rewards = []
    for answer, golden in zip(predicted_answers(completions, predicted_answer), golden_answers, strict=True):
        golds = {normalize_answer(gold) for gold in _as_answer_list(golden)}
        rewards.append(float(answer is not None and normalize_answer(answer) in golds))
    return rewards


def f1_reward(completions, golden_answers, predicted_answer=None, **kwargs) -> list[float]:
    """Token-level F1 between the last `<answer>` and the best-matching gold answer (0.0 without an answer).

    Example:
        >>> f1_reward(["<answer>Paris France</answer>"], [["Paris"]])
        [0.6666666666666666]
    """
    rewards = []
    for answer, golden in zip(predicted_answers(completions, predicted_answer), golden_answers, strict=True):
        golds = _as_answer_list(golden)
        rewards.append(max((_f1(answer, gold) for gold in golds), default=0.0) if answer is not None else 0.0)
    return rewards


def _contains(text: str, gold: str) -> bool:
    # Containment on token boundaries of the normalised strings: "1990" does not contain the gold answer "99".
    normalized_gold = normalize_answer(gold)
    return bool(normalized_gold) and f" {normalized_gold} " in f" {normalize_answer(text)} "


def cover_exact_match_reward(completions, golden_answers, predicted_answer=None, **kwargs) -> list[float]:
    """1.0 when a gold answer, normalised, appears inside the normalised last `<answer>` (on word boundaries), else 0.0.

    Also called "cover EM" or "sub-EM": it forgives answers that wrap the right entity in extra words. Containment is
    checked on whole normalised tokens, so a gold answer "99" is not found inside a predicted "1990".

    Example:
        >>> cover_exact_match_reward(["<answer>It is the Eiffel Tower in Paris</answer>"], [["Eiffel Tower"]])
        [1.0]
        >>> cover_exact_match_reward(["<answer>1990</answer>"], [["99"]])
        [0.0]
    """
    rewards = []
    for answer, golden in zip(predicted_answers(completions, predicted_answer), golden_answers, strict=True):
        found = answer is not None and any(_contains(answer, gold) for gold in _as_answer_list(golden))
        rewards.append(float(found))
    return rewards


def contains_answer(texts, golden_answers) -> bool:
    """Whether any gold answer appears (normalised, on word boundaries) in any of `texts`, e.g. retrieved passages.

    Example:
        >>> contains_answer(["Doc 1(Title: Veldoria) Its capital is Quarnel."], ["quarnel", "Qarn"])
        True
    """
    if isinstance(texts, str):
        texts = [texts]
    golds = _as_answer_list(golden_answers)
    return any(_contains(text, gold) for text in texts for gold in golds)


def _retrieval_has_answer(text, golden, answer_in_retrieval, retrieved_texts) -> bool:
    # Prefer what the rollout measured; fall back to the retrieved texts, then to the observations in the completion.
    if answer_in_retrieval is not None:
        return bool(answer_in_retrieval)
    if retrieved_texts is None:
        retrieved_texts = INFORMATION_BLOCK.findall(text)
    return contains_answer(retrieved_texts, golden)


class FormatReward:
    """Exact match shaped by format (arXiv 2505.15117). Build it with `get_format_reward`.

    | exact match | well-formed | reward |
    |---|---|---|
    | yes | yes | 1 |
    | yes | no | 1 - lambda_format |
    | no | yes | lambda_format (+ lambda_retrieval if a gold answer was retrieved) |
    | no, but an `<answer>` is there | no | lambda_final |
    | no `<answer>` | no | 0 |

    Instances pickle (a module-level class with plain float fields) and carry a `__name__` for TRL's logs.
    """

    def __init__(
        self,
        lambda_format: float = 0.2,
        lambda_final: float = 0.1,
        lambda_retrieval: float = 0.0,
        require_think: bool = True,
    ):
        lambdas = {"lambda_format": lambda_format, "lambda_final": lambda_final, "lambda_retrieval": lambda_retrieval}
        for name, value in lambdas.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}; the paper uses 0.2 / 0.1 / 0.0.")
        if lambda_format + lambda_retrieval > 1.0:
            raise ValueError(
                "lambda_format + lambda_retrieval must not exceed 1, or a wrong answer could outscore a right one."
            )
        self.lambda_format = float(lambda_format)
        self.lambda_final = float(lambda_final)
        self.lambda_retrieval = float(lambda_retrieval)
        self.require_think = require_think
        self.__name__ = "format_reward"

    def __repr__(self) -> str:
        return (
            f"FormatReward(lambda_format={self.lambda_format}, lambda_final={self.lambda_final}, "
            f"lambda_retrieval={self.lambda_retrieval})"
        )

    def __call__(
        self,
        completions,
        golden_answers,
        answer_in_retrieval=None,
        retrieved_texts=None,
        predicted_answer=None,
        **kwargs,
    ):
        count = len(completions)
        in_retrieval = answer_in_retrieval if answer_in_retrieval is not None else [None] * count
        texts = retrieved_texts if retrieved_texts is not None else [None] * count
        answers = predicted_answers(completions, predicted_answer)
        exact = exact_match_reward(completions, golden_answers, predicted_answer=answers)
        rewards = []
        for completion, golden, answer, correct, found, retrieved in zip(
            completions, golden_answers, answers, exact, in_retrieval, texts, strict=True
        ):
            text = completion_text(completion)
            well_formed = is_valid_sequence(text, require_think=self.require_think)
            if correct:
                reward = 1.0 if well_formed else 1.0 - self.lambda_format
            elif well_formed:
                reward = self.lambda_format
                if self.lambda_retrieval and _retrieval_has_answer(text, golden, found, retrieved):
                    reward += self.lambda_retrieval
            else:
                reward = self.lambda_final if answer is not None else 0.0
            rewards.append(reward)
        return rewards


def get_format_reward(
    lambda_format: float = 0.2, lambda_final: float = 0.1, lambda_retrieval: float = 0.0, require_think: bool = True
) -> FormatReward:
    """The format-aware exact-match reward of arXiv 2505.15117 (defaults: the values that paper uses).

    A correct, well-formed completion earns 1; correct but malformed 1 - lambda_format; wrong but well-formed
    lambda_format, plus lambda_retrieval when a gold answer appeared in the retrieved passages (read from the rollout's
    `answer_in_retrieval` or `retrieved_texts` columns, else from the completion's `<information>` blocks); wrong,
    malformed but with an `<answer>` lambda_final; anything else 0. "Well-formed" is `is_valid_sequence`.

    Example:
        >>> reward = get_format_reward()
        >>> reward(["<think>sure</think><answer>Quarnel</answer>", "<answer>Quarnel</answer>", "no idea"],
        ...        [["Quarnel"], ["Quarnel"], ["Quarnel"]])
        [1.0, 0.8, 0.0]
    """
    return FormatReward(lambda_format, lambda_final, lambda_retrieval, require_think=require_think)
