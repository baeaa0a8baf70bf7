"""Int8 scan + exact re-scoring: recall against exact search, exact scores, and the edge cases."""

import numpy as np
import pytest

from trl_search.retrievers.quantized import Int8RescoredIndex
from trl_search.retrievers.vector_index import TorchExactIndex


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clustered(n, dim, seed=0):
    """Unit vectors around a shared direction and 50 topics, and queries that are noisy copies of some of them."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim)
    topics = rng.standard_normal((50, dim))
    vectors = 0.8 * shared / np.linalg.norm(shared) + 0.45 * topics[rng.integers(0, 50, n)] / np.sqrt(dim)
    vectors += 0.45 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    queries = vectors[rng.choice(n, min(n, 300), replace=False)] + 0.6 * rng.standard_normal(
        (min(n, 300), dim)
    ) / np.sqrt(dim)
    return vectors, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("scan", ["int8", "float"])
def test_recall_at_3_against_exact_search(scan):
    vectors, queries = clustered(20_000, 128)
    truth_scores, truth_ids = TorchExactIndex.from_vectors(vectors, devices=["cpu"]).search(queries, 3)
    index = Int8RescoredIndex.from_vectors(vectors, device="cpu", candidates=32, scan=scan)
    scores, ids = index.search(queries, 3)
    recall = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(ids.tolist(), truth_ids.tolist())])
    assert recall >= 0.99
    # the returned scores are the exact inner products of the returned rows, best first
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", vectors[ids], queries), rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_a_short_list_shorter_than_needed_loses_recall_so_rescoring_is_what_makes_it_exact():
    vectors, queries = clustered(20_000, 128)
    _, truth_ids = TorchExactIndex.from_vectors(vectors, devices=["cpu"]).search(queries, 3)
    _, ids = Int8RescoredIndex.from_vectors(vectors, device="cpu", candidates=3).search(queries, 3)
    _, rescored = Int8RescoredIndex.from_vectors(vectors, device="cpu", candidates=32).search(queries, 3)
    assert (ids == truth_ids).mean() < (rescored == truth_ids).mean()


def test_k_larger_than_the_index_returns_every_row_once():
    vectors, queries = clustered(10, 16)
    scores, ids = Int8RescoredIndex.from_vectors(vectors, device="cpu").search(queries[:4], 50)
    assert ids.shape == scores.shape == (4, 10)
    assert all(sorted(row) == list(range(10)) for row in ids.tolist())


def test_ties_return_every_tied_row():
    vectors = np.zeros((6, 8), dtype=np.float32)
    vectors[:, 0] = 1.0  # six identical rows
    vectors[5] = [0, 1, 0, 0, 0, 0, 0, 0]
    scores, ids = Int8RescoredIndex.from_vectors(vectors, device="cpu").search(vectors[:1], 5)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3, 4] and np.allclose(scores, 1.0)


def test_empty_batch_and_wrong_dimension():
    vectors, _ = clustered(100, 16)
    index = Int8RescoredIndex.from_vectors(vectors, device="cpu")
    scores, ids = index.search(np.zeros((0, 16), dtype=np.float32), 3)
    assert scores.shape == ids.shape == (0, 3)
    with pytest.raises(ValueError, match="queries must be"):
        index.search(np.zeros((2, 15), dtype=np.float32), 3)


def test_dimensions_the_int8_kernel_cannot_take_fall_back_to_the_float_scan():
    vectors, queries = clustered(500, 20)  # 20 is not a multiple of 8
    _, truth_ids = TorchExactIndex.from_vectors(vectors, devices=["cpu"]).search(queries, 3)
    _, ids = Int8RescoredIndex.from_vectors(vectors, device="cpu", scan="int8").search(queries, 3)
    assert (ids == truth_ids).mean() >= 0.99


def test_memory_formula_for_wiki18():
    memory = Int8RescoredIndex.memory_bytes(21_015_324, 768)
    assert memory["int8 codes"] == 21_015_324 * 768 and memory["fp16 vectors"] == 2 * memory["int8 codes"]


def test_memory_mapped_and_fp16_vectors_stay_where_they_are(tmp_path):
    vectors, queries = clustered(2_000, 32)
    np.save(tmp_path / "vectors.npy", vectors.astype(np.float16))
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    index = Int8RescoredIndex.from_vectors(mapped, device="cpu")
    assert index.vectors is mapped  # re-scoring reads the file, no copy in memory
    _, truth_ids = TorchExactIndex.from_vectors(mapped, devices=["cpu"]).search(queries, 3)
    assert (index.search(queries, 3)[1] == truth_ids).mean() >= 0.99
