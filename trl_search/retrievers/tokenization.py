"""The one BM25 tokenisation shared by every BM25 engine, so switching engines never changes what matches."""

from __future__ import annotations

import re
from functools import lru_cache


# bm25s's default pattern: runs of two or more word characters (Unicode-aware), after lowercasing.
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lowercase, split into words of 2+ characters, drop English stopwords, Snowball-stem (English).

    Example:
        >>> tokenize(["The capitals of France!"])
        [['capit', 'franc']]
    """
    stopwords, stemmer = _stopwords(), _stemmer()
    words = [[word for word in TOKEN_PATTERN.findall(text.lower()) if word not in stopwords] for text in texts]
    # One stemWords call per batch: PyStemmer caches stems, and the call overhead dominates on short texts.
    flat = stemmer.stemWords([word for row in words for word in row])
    tokens, start = [], 0
    for row in words:
        tokens.append(flat[start : start + len(row)])
        start += len(row)
    return tokens
