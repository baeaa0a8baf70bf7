"""The one BM25 tokenisation shared by every BM25 engine, so switching engines never changes what matches."""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import chain, repeat


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


class TermIds:
    """`tokenize` fused with the term -> id lookup of an index build: each distinct surface word is lowercased,
    checked against the stopwords and stemmed once, then every later occurrence costs one dict lookup. Gives exactly
    the terms `tokenize` gives.

    Example:
        >>> terms = TermIds()
        >>> ids, lengths = terms.encode(["The capitals of France!", "France"])
        >>> [terms.terms[i] for i in ids.tolist()], lengths.tolist()
        (['capit', 'franc', 'franc'], [2, 1])
    """

    _STOPWORD = -1
    _MAX_WORDS = 4_000_000  # surface-word memo bound (the term vocabulary itself is kept whole)

    def __init__(self):
        self.vocab: dict[str, int] = {}  # term (stem) -> id, in order of first appearance
        self.terms: list[str] = []
        self._words: dict[str, int] = {}  # surface word -> term id, or _STOPWORD

    def _learn(self, words: set[str]) -> None:
        if len(self._words) + len(words) > self._MAX_WORDS:
            self._words.clear()
        stopwords = _stopwords()
        content = [word for word in words if word not in stopwords]
        for word in words.difference(content):
            self._words[word] = self._STOPWORD
        for word, stem in zip(content, _stemmer().stemWords(content)):
            term = self.vocab.get(stem)
            if term is None:
                term = self.vocab[stem] = len(self.terms)
                self.terms.append(stem)
            self._words[word] = term

    def encode(self, texts: list[str]):
        """(term ids of all texts concatenated as int32, number of terms per text as int64)."""
        import numpy as np

        words = [TOKEN_PATTERN.findall(text.lower()) for text in texts]
        flat = list(chain.from_iterable(words))
        lookup = self._words.get
        ids = np.fromiter(map(lookup, flat, repeat(-2)), dtype=np.int32, count=len(flat))
        unknown = np.flatnonzero(ids == -2)
        if len(unknown):
            self._learn({flat[i] for i in unknown.tolist()})
            lookup = self._words.get
            ids[unknown] = [lookup(flat[i]) for i in unknown.tolist()]
        per_text = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        kept = ids >= 0
        if kept.all():
            return ids, per_text
        lengths = np.bincount(np.repeat(np.arange(len(texts)), per_text)[kept], minlength=len(texts))
        return ids[kept], lengths.astype(np.int64)
