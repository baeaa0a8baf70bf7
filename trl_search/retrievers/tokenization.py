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


# Word -> stem memo shared by all calls: a corpus repeats a few hundred thousand words millions of times, and
# PyStemmer's own cache (10k entries) thrashes on large vocabularies. Bounded so a stream of junk cannot grow it forever.
_STEMS: dict[str, str] = {}
_MAX_STEMS = 2_000_000


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lowercase, split into words of 2+ characters, drop English stopwords, Snowball-stem (English).

    Example:
        >>> tokenize(["The capitals of France!"])
        [['capit', 'franc']]
    """
    stopwords, stems = _stopwords(), _STEMS
    words = [[word for word in TOKEN_PATTERN.findall(text.lower()) if word not in stopwords] for text in texts]
    missing = list({word for row in words for word in row if word not in stems})
    if missing:
        if len(stems) + len(missing) > _MAX_STEMS:
            stems.clear()
            missing = list({word for row in words for word in row})
        stems.update(zip(missing, _stemmer().stemWords(missing)))
    return [[stems[word] for word in row] for row in words]
