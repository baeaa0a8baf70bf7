"""The server under hostile input and load, over real loopback sockets: schema conformance (schemathesis), fairness,
abandoned work, queue bounds, deadlines, streamed body limits and the token checked before the body."""

import shutil
import socket
import subprocess
import threading
import time

import pytest


requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from trl_search.retrievers import BM25Retriever  # noqa: E402
from trl_search.server import ServerConfig, ServerThread  # noqa: E402


# 413 added to the refusals schemathesis expects for schema-breaking bodies: a body with too many queries can also
# pass the body limit, and then 413 (documented in the schema) is the right answer.
SCHEMATHESIS_CONFIG = """[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""


CORPUS = "tests/data/retrieval_corpus.jsonl"
PER_QUERY_S = 0.001  # added search time per query, so that a maximal request takes a measurable while
LIMITS = ServerConfig(max_queries=2048, max_batch_queries=64, max_queued_queries=4096, max_topk=5)


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever.build(CORPUS)


class SlowBM25(BM25Retriever):
    """Real BM25 whose search costs PER_QUERY_S more per query (as a large index would)."""

    def __init__(self, bm25):
        super().__init__(bm25._engine, bm25._store, bm25.parameters)

    def search(self, queries, k):
        time.sleep(PER_QUERY_S * len(queries))
        return super().search(queries, k)


def health(server):
    return requests.get(server.url.replace("/retrieve", "/health"), timeout=10).json()


def wait_idle(server, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        state = health(server)
        if state["queued_queries"] == 0 and state["searching_queries"] == 0:
            return state
        time.sleep(0.05)
    raise AssertionError("the server still has queued work")


def test_schemathesis_all_checks_pass(bm25, tmp_path):
    """Every documented status, header and body shape is what the server answers (positive and negative cases)."""
    pytest.importorskip("schemathesis")
    executable = shutil.which("schemathesis") or shutil.which("st")
    if executable is None:
        pytest.skip("the schemathesis command is not installed")
    config = ServerConfig(max_queries=8, max_query_chars=200, max_topk=5, max_body_bytes=20_000, token="s3cret")
    with ServerThread(bm25, config=config) as server:
        schema = server.url.replace("/retrieve", "/openapi.json")
        config_file = tmp_path / "schemathesis.toml"
        config_file.write_text(SCHEMATHESIS_CONFIG)
        result = subprocess.run(
            [executable, "--config-file", str(config_file), "run", schema, "--checks", "all", "--mode", "all"]
            + ["--max-examples", "15", "--seed", "0"]
            + ["-H", "Authorization: Bearer s3cret", "--no-color"],
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout


def test_small_request_is_not_starved_by_a_maximal_one(bm25):
    with ServerThread(SlowBM25(bm25), config=LIMITS) as server:
        big_done = []

        def maximal():
            started = time.perf_counter()
            response = requests.post(server.url, json={"queries": ["cave cheese"] * 2048, "topk": 5}, timeout=60)
            big_done.append((response.status_code, time.perf_counter() - started))

        thread = threading.Thread(target=maximal)
        thread.start()
        while health(server)["queued_queries"] == 0:  # the maximal request is queued and being searched
            time.sleep(0.005)
        latencies = []
        for _ in range(3):
            started = time.perf_counter()
            response = requests.post(server.url, json={"queries": ["tin mines"], "topk": 1}, timeout=60)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200 and response.json()["result"][0][0]["id"]
        assert health(server)["queued_queries"] > 0, "the small requests must have run while the maximal one did"
        thread.join(timeout=60)
    assert big_done[0][0] == 200
    # 2048 queries take >= 2 s; a 1-query request waits for at most about one 64-query batch.
    assert big_done[0][1] >= 2048 * PER_QUERY_S
    assert max(latencies) < 0.25 * big_done[0][1], (latencies, big_done)


def test_work_of_a_client_that_hung_up_is_dropped(bm25):
    import json

    body = json.dumps({"queries": ["cave cheese"] * 2048, "topk": 5}).encode()
    with ServerThread(SlowBM25(bm25), config=LIMITS) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            while health(server)["queries"] < 128:  # queued, and a few batches searched
                time.sleep(0.01)
        # The client hung up with most of its 2048 queries still queued.
        state = wait_idle(server)
        started = time.perf_counter()
        assert requests.post(server.url, json={"queries": ["tin mines"]}, timeout=10).status_code == 200
        latency = time.perf_counter() - started
    assert state["dropped_queries"] >= 1024, state  # most of the 2048 queries were never searched
    assert state["queries"] + state["dropped_queries"] == 2048
    assert latency < 1.0


def test_work_past_its_deadline_is_dropped_with_503(bm25):
    with ServerThread(SlowBM25(bm25), config=LIMITS) as server:
        started = time.perf_counter()
        response = requests.post(
            server.url,
            json={"queries": ["cave cheese"] * 2048, "topk": 5},
            headers={"X-Request-Timeout": "0.3"},
            timeout=30,
        )
        elapsed = time.perf_counter() - started
        state = wait_idle(server)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "deadline of 0.3 s" in response.json()["detail"]
    assert elapsed < 3.0  # not the >= 2 s that searching all 2048 queries takes
    assert state["dropped_queries"] >= 1024


def test_full_queue_answers_503_with_retry_after(bm25):
    config = ServerConfig(max_queries=512, max_batch_queries=64, max_queued_queries=1024)
    body = {"queries": ["cave cheese"] * 512, "topk": 5}
    with ServerThread(SlowBM25(bm25), config=config) as server:
        statuses = []
        threads = [
            threading.Thread(
                target=lambda: statuses.append(requests.post(server.url, json=body, timeout=60).status_code)
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        while health(server)["requests"] < 2:  # both queued: about 1024 - 64 queries wait
            time.sleep(0.005)
        refused = requests.post(server.url, json=body, timeout=60)
        for thread in threads:
            thread.join(timeout=60)
        state = health(server)
    assert statuses == [200, 200]
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "max_queued_queries=1024" in refused.json()["detail"]
    assert state["refused_requests"] == 1


def test_chunked_body_over_the_limit_is_refused_while_streaming(bm25):
    """A chunked body (no Content-Length) gets 413 as soon as it passes the limit, before the client finishes it."""
    import select

    with ServerThread(bm25, config=ServerConfig(max_body_bytes=20_000)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            answer, chunks_sent = b"", 0
            while chunks_sent < 200 and not answer:  # 200 KB if the server never answered
                sock.sendall(b"3e8\r\n" + b" " * 1000 + b"\r\n")
                chunks_sent += 1
                if select.select([sock], [], [], 0.01)[0]:
                    answer = sock.recv(65536)
            while answer and not answer.endswith(b"}"):  # the JSON body may follow the headers in another packet
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        ok = requests.post(server.url, data=iter([b'{"queries": ', b'["cave cheese"]}']), timeout=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_body_bytes=20000" in answer
    assert chunks_sent < 200
    assert ok.status_code == 200 and ok.json()["result"][0][0]["id"] == "13"  # chunked bodies within the limit work


def _raw_exchange(port: int, head: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
        return data


def test_token_is_checked_before_the_body_is_read(bm25):
    with ServerThread(bm25, config=ServerConfig(token="s3cret")) as server:
        # Headers announcing 10 MB, and no body at all: the 401 must come without waiting for it.
        head = (
            b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer wrong\r\nContent-Length: 10000000\r\n\r\n"
        )
        started = time.perf_counter()
        answer = _raw_exchange(server.port, head)
        elapsed = time.perf_counter() - started
        unauthenticated_bad_body = requests.post(server.url, data=b"{not json", timeout=10)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert elapsed < 4.0  # the socket read gives up at 5 s: an answer that waited for the body never comes
    assert unauthenticated_bad_body.status_code == 401  # no validation details for strangers


def test_content_length_over_the_limit_is_refused_before_reading(bm25):
    with ServerThread(bm25, config=ServerConfig(max_body_bytes=20_000)) as server:
        head = b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n\r\n"
        answer = _raw_exchange(server.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_openapi_documents_every_status_the_server_answers(bm25):
    with ServerThread(bm25, config=ServerConfig(token="t")) as server:
        schema = requests.get(server.url.replace("/retrieve", "/openapi.json"), timeout=10).json()
        wrong_method = requests.get(server.url, timeout=10)
    operation = schema["paths"]["/retrieve"]["post"]
    assert sorted(operation["responses"]) == ["200", "400", "401", "413", "422", "500", "503"]
    assert schema["components"]["schemas"]["Error"]["properties"]["detail"] == {"type": "string"}
    assert operation["security"] == [{"bearer": []}]
    topk = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["topk"]
    assert topk["type"] == ["integer", "null"]  # so `topk: true` is invalid by the schema, and refused
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"


@pytest.mark.parametrize("threads", [1, 2])
def test_search_threads_run_batches_side_by_side(bm25, threads):
    class CountingBM25(SlowBM25):
        """Records how many searches run at the same moment."""

        def __init__(self, bm25):
            super().__init__(bm25)
            self.lock, self.running, self.most = threading.Lock(), 0, 0

        def search(self, queries, k):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                return super().search(queries, k)
            finally:
                with self.lock:
                    self.running -= 1

    retriever = CountingBM25(bm25)
    config = ServerConfig(max_batch_queries=64, search_threads=threads)
    with ServerThread(retriever, config=config) as server:
        queries = ["cave cheese", "tin mines", "Who founded Brantis?"] * 100
        answer = requests.post(server.url, json={"queries": queries, "topk": 2}, timeout=60).json()["result"]
    assert [[hit["id"] for hit in hits] for hits in answer] == [
        [p.id for p in hits] for hits in bm25.search(queries, 2)
    ]
    assert retriever.most == threads  # 300 queries = 5 slices of 64: with 2 threads, two are searched at once
