"""`trl-search serve` as a real process: --verify at start-up, --workers, and options refused with a clear message."""

import os
import subprocess
import sys
import time

import pytest


requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from trl_search.retrievers import BM25Retriever  # noqa: E402


CORPUS = os.path.join(os.path.dirname(__file__), "data", "retrieval_corpus.jsonl")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve") / "index"
    BM25Retriever.build(CORPUS).save(directory)
    return directory


def _serve(*arguments, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "trl_search.cli", "serve", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(*arguments):
    """Starts `trl-search serve` on a free port and waits until /health answers; returns (process, url)."""
    from tests.test_server import _free_port

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trl_search.cli", "serve", *map(str, arguments), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode())
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process, f"http://127.0.0.1:{port}/retrieve"
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def test_verify_refuses_a_damaged_index_without_a_traceback(index_dir, tmp_path):
    damaged = tmp_path / "damaged"
    BM25Retriever.load(index_dir).save(damaged)
    passages = damaged / "passages.jsonl"
    data = bytearray(passages.read_bytes())
    at = data.index(b"cheese")
    data[at : at + 6] = b"cheesf"  # same size: only the checksum can tell
    passages.unlink()  # the saved copy may be a hard link to the original index's file
    passages.write_bytes(bytes(data))
    result = _serve("--retriever", damaged, "--verify", "--port", "1")
    assert result.returncode != 0
    assert "passages.jsonl" in result.stderr and "SHA-256" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_then_serve_a_sound_index(index_dir):
    process, url = _start("--retriever", index_dir, "--verify")
    try:
        answer = requests.post(url, json={"queries": ["cave cheese"], "topk": 1}, timeout=10).json()
        assert answer["result"][0][0]["id"] == "13"
    finally:
        process.kill()
        process.wait(timeout=10)


def test_two_workers_serve_the_same_answers(index_dir):
    psutil = pytest.importorskip("psutil")
    process, url = _start("--retriever", index_dir, "--workers", "2", "--mmap")
    try:
        expected = BM25Retriever.load(index_dir).search(["cave cheese", "Who founded Brantis?"], 3)
        for _ in range(6):  # connections spread over both worker processes
            with requests.Session() as session:
                answer = session.post(url, json={"queries": ["cave cheese", "Who founded Brantis?"]}, timeout=10)
            assert [[hit["id"] for hit in hits] for hits in answer.json()["result"]] == [
                [p.id for p in hits] for hits in expected
            ]
        workers = [child for child in psutil.Process(process.pid).children(recursive=True) if "python" in child.name()]
        assert len(workers) >= 2
    finally:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--max-queued-queries", "10"], "max_queued_queries (10) must be >= max_queries"),
        (["--topk", "0"], "default_topk must be an integer >= 1"),
    ],
)
def test_bad_options_are_refused_naming_them(index_dir, arguments, message):
    result = _serve("--retriever", index_dir, *arguments)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_verify_with_a_url_is_refused():
    result = _serve("--retriever", "http://127.0.0.1:9/retrieve", "--verify")
    assert result.returncode != 0 and "--verify checks a local index directory" in result.stderr
