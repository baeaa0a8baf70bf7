"""The /retrieve server over real loopback HTTP: Search-R1's contract, batching, limits, auth, failures, restarts."""

import os
import random
import socket
import subprocess
import sys
import threading
import time

import pytest


requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from trl_search.retrievers import BM25Retriever, RemoteRetriever  # noqa: E402
from trl_search.retrievers.remote import (  # noqa: E402
    RetrieverRequestError,
    RetrieverUnavailableError,
    passage_from_document,
)
from trl_search.server import ServerConfig, ServerThread  # noqa: E402


CORPUS = os.path.join(os.path.dirname(__file__), "data", "retrieval_corpus.jsonl")
LIMITS = ServerConfig(max_queries=8, max_query_chars=200, max_topk=5, max_body_bytes=300_000)


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever.build(CORPUS, engine="tantivy")


@pytest.fixture(scope="module")
def server(bm25):
    with ServerThread(bm25, config=LIMITS) as running:
        yield running


def post(server, body, **kwargs):
    return requests.post(server.url, json=body, timeout=10, **kwargs)


def test_search_r1_response_shape_with_scores(server, bm25):
    response = post(server, {"queries": ["Who founded Brantis?", "cave cheese"], "topk": 3, "return_scores": True})
    assert response.status_code == 200
    result = response.json()["result"]
    direct = bm25.search(["Who founded Brantis?", "cave cheese"], k=3)
    assert len(result) == 2
    for hits, expected in zip(result, direct):
        assert [set(hit) for hit in hits] == [{"document", "score"}] * len(expected)
        assert [set(hit["document"]) for hit in hits] == [{"id", "contents"}] * len(expected)
        assert [hit["document"]["id"] for hit in hits] == [p.id for p in expected]
        assert [hit["document"]["contents"] for hit in hits] == [f'"{p.title}"\n{p.text}' for p in expected]
        assert [hit["score"] for hit in hits] == pytest.approx([p.score for p in expected])


def test_search_r1_response_shape_without_scores_and_defaults(server, bm25):
    # Search-R1 defaults: return_scores false (bare documents), topk from the server (3).
    response = post(server, {"queries": ["Who founded Brantis?"]})
    assert response.status_code == 200
    hits = response.json()["result"][0]
    assert [set(hit) for hit in hits] == [{"id", "contents"}] * 3
    assert [hit["id"] for hit in hits] == [p.id for p in bm25.search(["Who founded Brantis?"], 3)[0]]
    assert post(server, {"queries": [], "topk": 3}).json() == {"result": []}
    assert post(server, {"queries": ["the of"], "topk": 3, "extra": 1}).json() == {"result": [[]]}


def test_remote_retriever_matches_direct_search_and_splits_batches(server, bm25):
    queries = ["Who founded Brantis?", "copper bridges", "", "heather honey", "storm of 1955", "Ærøvik"] * 3
    health = requests.get(server.url.replace("/retrieve", "/health"), timeout=5).json()
    client = RemoteRetriever(server.url, max_batch_size=4)
    remote = client.search(queries, k=3)
    assert remote == bm25.search(queries, k=3)
    after = client.health()
    assert after["status"] == "ok" and after["retriever"]["engine"] == "tantivy"
    assert after["requests"] - health["requests"] == 5  # 18 queries in requests of at most 4


def test_concurrent_clients_are_merged_into_batches(bm25):
    class SlowRetriever(BM25Retriever):
        """Real BM25, with a search slow enough that concurrent requests pile up behind it."""

        def __init__(self):
            super().__init__(bm25._engine, bm25._store, bm25.parameters)

        def search(self, queries, k):
            time.sleep(0.05)
            return super().search(queries, k)

    queries = ["Who founded Brantis?", "cave cheese", "tin mines", "glass market", "rack railway"]
    expected = bm25.search(queries, k=3)
    errors, answers = [], []

    def client(i):
        try:
            remote = RemoteRetriever(server.url)
            for j in range(5):
                shifted = queries[(i + j) % 5 :] + queries[: (i + j) % 5]
                answers.append((shifted, remote.search(shifted, k=1 + (i % 3))))
        except Exception as error:  # surfaced below
            errors.append(error)

    with ServerThread(SlowRetriever(), config=ServerConfig(batch_wait_ms=5)) as server:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        health = requests.get(server.url.replace("/retrieve", "/health"), timeout=5).json()
    assert not errors
    assert len(answers) == 40
    by_query = dict(zip(queries, expected))
    for shifted, result in answers:
        for query, hits in zip(shifted, result):
            assert hits == by_query[query][: len(hits)] and 1 <= len(hits) <= 3
    assert health["requests"] == 40
    assert health["batches"] <= 20, f"40 concurrent requests should share batches, got {health['batches']}"


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"queries": ["q"] * 9, "topk": 3}, 422, "max_queries=8"),
        ({"queries": ["x" * 201], "topk": 3}, 422, "max_query_chars=200"),
        ({"query": "x" * 201}, 422, "max_query_chars=200"),
        ({"queries": ["q"], "topk": -1}, 422, "'topk' must be >= 0"),
        ({"queries": ["q"], "topk": True}, 422, "'topk' must be an integer"),
        ({"queries": ["q"], "topk": 2.5}, 422, "'topk' must be an integer"),
        ({"queries": ["q"], "query": "q"}, 422, "not both"),
        ({"queries": ["q" * 150] * 8, "topk": 3, "pad": "p" * 300_000}, 413, "max_body_bytes=300000"),
    ],
)
def test_limits_answer_4xx_naming_the_limit(server, body, status, message):
    response = post(server, body)
    assert response.status_code == status
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    "data, status",
    [
        (b"{not json", 400),
        (b"", 400),
        (b"   ", 400),
        (b'{"queries": ["q"], "topk": NaN}', 400),
        (b'{"queries": ["q"], "topk": Infinity}', 400),
        (b'{"queries": ["q"], "topk": -Infinity}', 400),
        (b"\xff\xfe\x00garbage", 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'{"queries": ["q"], "topk": ' + b"9" * 5000 + b"}", 400),
        (b'{"queries": ["q"], "topk": 1e400}', 422),
        (b"[1, 2]", 422),
        (b'"just a string"', 422),
        (b"null", 422),
        (b'{"topk": 3}', 422),
        (b'{"queries": "not a list"}', 422),
        (b'{"queries": [1, 2]}', 422),
        (b'{"queries": [null]}', 422),
        (b'{"query": ["a list"]}', 422),
        (b'{"queries": ["\\ud800"]}', 422),
        (b'{"queries": ["q"], "topk": "three"}', 422),
        (b'{"queries": ["q"], "return_scores": "maybe"}', 422),
        (b'{"queries": ["q"], "return_scores": 1}', 422),
    ],
)
def test_malformed_bodies_get_4xx_naming_the_problem_never_500(server, data, status):
    response = requests.post(server.url, data=data, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert len(response.json()["detail"]) > 10


def test_cached_server_reports_hit_rate(bm25):
    from trl_search.retrievers import CachedRetriever

    with ServerThread(CachedRetriever(bm25)) as server:
        client = RemoteRetriever(server.url)
        first = client.search(["cave cheese", "tin mines", "cave cheese"], k=2)
        assert client.search(["tin mines"], k=1) == [first[1][:1]]
        cache = client.health()["cache"]
    assert (cache["hits"], cache["lookups"]) == (2, 4)


def test_bearer_token(bm25):
    config = ServerConfig(token="s3cret")
    with ServerThread(bm25, config=config) as server:
        body = {"queries": ["cave cheese"], "topk": 1}
        assert post(server, body).status_code == 401
        assert post(server, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = post(server, body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["result"][0][0]["id"] == "13"
        assert RemoteRetriever(server.url, token="s3cret").search(["cave cheese"], 1)[0][0].id == "13"
        with pytest.raises(RetrieverRequestError, match="401"):
            RemoteRetriever(server.url, token="").search(["cave cheese"], 1)


def test_server_errors_are_retried_then_succeed(bm25):
    class FlakyRetriever(BM25Retriever):
        def __init__(self):
            super().__init__(bm25._engine, bm25._store, bm25.parameters)
            self.failures = 2

        def search(self, queries, k):
            if self.failures:
                self.failures -= 1
                raise RuntimeError("transient failure")
            return super().search(queries, k)

    flaky = FlakyRetriever()
    with ServerThread(flaky) as server:
        client = RemoteRetriever(server.url, retries=3, backoff=0.01)
        assert client.search(["cave cheese"], 1)[0][0].id == "13"
        assert flaky.failures == 0
        flaky.failures = 5
        with pytest.raises(RetrieverUnavailableError, match=server.url.replace(".", r"\.")):
            RemoteRetriever(server.url, retries=1, backoff=0.01).search(["cave cheese"], 1)


def test_passage_from_search_r1_bm25_documents():
    # Search-R1's pyserini server answers title/text/contents without an id.
    document = {"title": "Quarnel", "text": "A harbour city.", "contents": '"Quarnel"\nA harbour city.'}
    assert passage_from_document(document, 2.0) == passage_from_document({"contents": document["contents"]}, 2.0)
    assert passage_from_document({"title": "T", "text": "x"}).title == "T"
    with pytest.raises(RetrieverRequestError):
        passage_from_document(["not", "a", "dict"])


def _serve_raw(answers):
    """A loopback socket server answering each connection with the next raw bytes of `answers`, then closing."""
    listener = socket.create_server(("127.0.0.1", 0))
    served = []

    def run():
        for answer in answers:
            connection, _ = listener.accept()
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(
                    next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(
                        b":"
                    )[1]
                )
                while len(body) < length:
                    body += connection.recv(65536)
                served.append(body)
                connection.sendall(answer)
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/retrieve", served


def test_answer_cut_short_is_retried():
    """A server killed between the headers and the body of its answer (what made the kill/restart test flaky: the
    client raised requests' ChunkedEncodingError instead of retrying) is retried like a dropped connection."""
    body = b'{"result": [[{"document": {"id": "1", "contents": "\\"T\\"\\nx"}, "score": 1.0}]]}'
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    url, served = _serve_raw([cut + body[:10], cut + body])
    hits = RemoteRetriever(url, retries=1, backoff=0.01).search(["q"], 1)
    assert hits[0][0].contents == '"T"\nx' and len(served) == 2


def test_503_retry_after_is_honoured():
    body = b'{"result": [[]]}'
    busy = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}"
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    url, served = _serve_raw([busy, ok])
    started = time.perf_counter()
    assert RemoteRetriever(url, retries=1, backoff=0.01).search(["q"], 1) == [[]]
    assert time.perf_counter() - started >= 1.0 and len(served) == 2


def test_retry_options_from_arguments_and_url():
    from trl_search.retrievers import load_retriever

    remote = load_retriever("http://127.0.0.1:8000/retrieve?retries=20&timeout=30&backoff=0.1")
    assert (remote.url, remote.retries, remote.timeout, remote.backoff) == (
        "http://127.0.0.1:8000/retrieve",
        20,
        30,
        0.1,
    )
    assert RemoteRetriever("http://h:1/retrieve", retries=2).retries == 2
    # The default rides out a server restart of 30 s: the waits between its attempts add up to more.
    default = RemoteRetriever("http://h:1/retrieve")
    waits = [min(default.backoff * 2**attempt, default.max_backoff) for attempt in range(default.retries)]
    assert sum(waits) > 30
    with pytest.raises(ValueError, match="Unknown option 'retires'.*known: retries, timeout"):
        RemoteRetriever("http://h:1/retrieve?retires=20")
    with pytest.raises(ValueError, match="retries=.many. .*must be an integer"):
        RemoteRetriever("http://h:1/retrieve?retries=many")
    with pytest.raises(ValueError, match="given both"):
        RemoteRetriever("http://h:1/retrieve?retries=3", retries=4)
    with pytest.raises(ValueError, match="retries, backoff and max_backoff must be >= 0"):
        RemoteRetriever("http://h:1/retrieve", retries=-1)


def test_clamped_topk_is_warned_once(bm25):
    with ServerThread(bm25, config=ServerConfig(default_topk=1, max_topk=2)) as server:
        client = RemoteRetriever(server.url)
        with pytest.warns(UserWarning, match="requested=5; served=2.*--max-topk"):
            assert len(client.search(["cave cheese Ostavel mountain"], k=5)[0]) <= 2
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client.search(["cave cheese"], k=5)


# ----- a real server process: killed mid-run, then restarted --------------------------------------------------


def _free_port() -> int:
    """A free port below the kernel's ephemeral range, so that while the server is down no outgoing connection (from
    this test's own retries or any other process) can be given that port, which would make the restart fail."""
    low = (
        int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
        if os.path.exists("/proc/sys/net/ipv4/ip_local_port_range")
        else 32768
    )
    for port in random.Random(os.getpid()).sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _start_server(index_dir, port):
    process = subprocess.Popen(
        [sys.executable, "-m", "trl_search.cli", "serve", "--retriever", str(index_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode())
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except requests.RequestException:  # not listening yet, or slow to answer on a loaded machine
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def test_server_killed_mid_run_then_restarted(bm25, tmp_path):
    bm25.save(tmp_path / "index")
    port = _free_port()
    process = _start_server(tmp_path / "index", port)
    url = f"http://127.0.0.1:{port}/retrieve"
    client = RemoteRetriever(url, retries=2, backoff=0.05, timeout=5)
    failures, successes = [], []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                successes.append(client.search(["cave cheese", "Who founded Brantis?"], k=2))
            except Exception as error:
                failures.append(error)
                return

    try:
        worker = threading.Thread(target=loop)
        worker.start()
        deadline = time.time() + 30
        while len(successes) < 5 and time.time() < deadline:
            time.sleep(0.01)
        process.kill()  # SIGKILL: no graceful shutdown, connections drop mid-request
        process.wait(timeout=10)
        worker.join(timeout=30)
        stop.set()
        assert len(successes) >= 5
        assert len(failures) == 1
        error = failures[0]
        assert isinstance(error, RetrieverUnavailableError)
        assert url in str(error) and "3 attempts" in str(error) and "trl-search serve" in str(error)
        assert "retries=N" in str(error)  # names the option that makes it wait longer

        process = _start_server(tmp_path / "index", port)
        # The same client (and its keep-alive pool) recovers once the server is back.
        assert [p.id for p in client.search(["cave cheese"], k=1)[0]] == ["13"]

        # A client with enough retries rides out the restart: its search started while the server was down.
        process.kill()
        process.wait(timeout=10)
        patient = RemoteRetriever(url, retries=30, backoff=0.1, max_backoff=0.5, timeout=5)
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(patient.search(["cave cheese"], k=1)))
        waiting.start()
        time.sleep(1.0)
        assert waiting.is_alive()  # still retrying
        process = _start_server(tmp_path / "index", port)
        waiting.join(timeout=30)
        assert [p.id for p in answers[0][0]] == ["13"]
    finally:
        stop.set()
        process.kill()
        process.wait(timeout=10)


def test_serve_command_refuses_non_index(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = subprocess.run(
        [sys.executable, "-m", "trl_search.cli", "serve", "--retriever", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "no manifest.json" in result.stderr
