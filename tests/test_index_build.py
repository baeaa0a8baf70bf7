"""The fast BM25 build (fused tokenisation + streamed score matrix) makes bm25s's own index, bit for bit."""

import json
import os

import numpy as np
import pytest

from trl_search.retrievers.bm25_engines import BM25sEngine
from trl_search.retrievers.tokenization import TermIds, tokenize


bm25s = pytest.importorskip("bm25s")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = [
    json.loads(line)["contents"] for line in open(os.path.join(ROOT, "trl_search", "sample_data", "corpus.jsonl"))
]
TEXTS += ["the a of and", "", "Ærøvik Ærøvik ÆRØVIK church, church; CHURCH"]  # stopwords only, empty, repeats


def test_term_ids_give_the_terms_of_tokenize():
    terms = TermIds()
    ids, lengths = map(np.concatenate, zip(terms.encode(TEXTS[:7]), terms.encode(TEXTS[7:])))
    expected = tokenize(TEXTS)
    assert lengths.tolist() == [len(tokens) for tokens in expected]
    assert [terms.terms[i] for i in ids.tolist()] == [token for tokens in expected for token in tokens]


@pytest.mark.parametrize("k1, b, spill", [(0.9, 0.4, True), (1.5, 0.75, False), (1.2, 0.0, True)])
def test_score_matrix_equals_bm25s_indexing(k1, b, spill, tmp_path):
    workdir = str(tmp_path) if spill else ""  # spilled pairs go through files in the work folder
    builder = BM25sEngine.Builder({"k1": k1, "b": b, "backend": "numba"}, workdir=workdir)
    for start in range(0, len(TEXTS), 64):  # several batches
        builder.add_texts(TEXTS[start : start + 64])
    ours = builder.finish().model
    vocab = {term: i for term, i in ours.vocab_dict.items() if term}
    reference = bm25s.BM25(k1=k1, b=b, method="lucene", backend="numpy")
    ids = [[vocab[token] for token in tokens] for tokens in tokenize(TEXTS)]
    reference.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    for name in ("data", "indices", "indptr"):
        assert ours.scores[name].dtype == reference.scores[name].dtype
        assert np.array_equal(ours.scores[name], reference.scores[name]), name
    assert ours.scores["num_docs"] == reference.scores["num_docs"] == len(TEXTS)
    assert ours.vocab_dict == reference.vocab_dict  # the same empty token at the end
    assert os.listdir(tmp_path) == []  # spill files removed
