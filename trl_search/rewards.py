"""Reward functions for search-augmented QA, in TRL's reward-function form.

Each takes `completions` (plain strings, or TRL's conversational form: a list of messages per completion) and
`golden_answers` (one list of strings per completion), ignores other keyword arguments, and returns `list[float]`.
They are plain module-level functions, so they pickle for multi-process data loading.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from .protocols import extract_answer


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


def exact_match_reward(completions, golden_answers, **kwargs) -> list[float]:
    """1.0 when the last `<answer>` of the completion equals any gold answer after `normalize_answer`, else 0.0.

    Example:
        >>> exact_match_reward(["<answer>The Beatles</answer>"], [["Beatles", "Fab Four"]])
        [1.0]
        >>> exact_match_reward([[{"role": "assistant", "content": "no answer tag"}]], [["x"]])
        [0.0]
    """
    rewards = []
    for completion, golden in zip(completions, golden_answers, strict=True):
        answer = extract_answer(completion_text(completion))
        golds = {normalize_answer(gold) for gold in _as_answer_list(golden)}
        rewards.append(float(answer is not None and normalize_answer(answer) in golds))
    return rewards


def f1_reward(completions, golden_answers, **kwargs) -> list[float]:
    """Token-level F1 between the last `<answer>` and the best-matching gold answer (0.0 without an answer).

    Example:
        >>> f1_reward(["<answer>Paris France</answer>"], [["Paris"]])
        [0.6666666666666666]
    """
    rewards = []
    for completion, golden in zip(completions, golden_answers, strict=True):
        answer = extract_answer(completion_text(completion))
        golds = _as_answer_list(golden)
        rewards.append(max((_f1(answer, gold) for gold in golds), default=0.0) if answer is not None else 0.0)
    return rewards
