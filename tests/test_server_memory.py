"""A `trl-search serve` process gives its memory back after maximal requests (issue 15: it kept ~2 GB)."""

import subprocess
import sys
import threading
import time

import pytest


requests = pytest.importorskip("requests")
psutil = pytest.importorskip("psutil")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from trl_search.retrievers import BM25Retriever  # noqa: E402


def test_memory_returns_to_idle_after_maximal_requests(tmp_path):
    # 3,000 long passages that all share the word "harbour", so every query fills its top-50.
    rows = [
        {"id": str(i), "contents": f'"Place {i}"\nThe harbour of place {i} ' + "lies by the grey sea. " * 70}
        for i in range(3000)
    ]
    BM25Retriever.build(rows).save(tmp_path / "index")
    from tests.test_server import _free_port

    port = _free_port()
    command = [sys.executable, "-m", "trl_search.cli", "serve", "--retriever", str(tmp_path / "index")]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--max-queries", "2048"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}/retrieve"
    try:
        deadline = time.time() + 60
        while True:
            try:
                requests.post(url, json={"queries": ["harbour"] * 8, "topk": 100}, timeout=10)
                break
            except requests.RequestException:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(server.stderr.read().decode()) from None
                time.sleep(0.1)
        process = psutil.Process(server.pid)
        time.sleep(0.3)
        idle = process.memory_info().rss
        sizes = []

        def maximal(offset):
            queries = [f"harbour place {offset + i}" for i in range(1024)]
            response = requests.post(url, json={"queries": queries, "topk": 50, "return_scores": True}, timeout=120)
            assert response.status_code == 200
            sizes.append(len(response.content))

        threads = [threading.Thread(target=maximal, args=(1000 * j,)) for j in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        # Returning to idle takes the server a moment after the answers leave (the last slices are freed, glibc unmaps
        # them): wait for it, up to 10 s, rather than sampling once.
        limit = 0.4 * min(sizes) if len(sizes) == 2 else 0
        deadline = time.time() + 10
        while True:
            after = process.memory_info().rss
            if after - idle < limit or time.time() > deadline:
                break
            time.sleep(0.2)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert len(sizes) == 2 and min(sizes) > 50_000_000  # two answers of > 50 MB each, at once
    # Before: the last answer (and glibc's fragmented heap) stayed resident; now only a few MB of caches remain.
    assert after - idle < 0.4 * min(sizes), (idle, after, sizes)
