"""Hostile input against a real `trl-search serve` process: how many bad requests get anything but a clear 4xx?

Claim (issue 15): no malformed request gets a 5xx, hangs, or kills the server; every one gets a 4xx JSON answer with a
`detail` message; the OpenAPI schema matches every answer (schemathesis, all checks).

    python benchmarks/bench_server_hostile.py                       # hand-written cases + 2,000 mutated bodies
    python benchmarks/bench_server_hostile.py --mutations 20000 --schemathesis-examples 500

Three trials, counted separately: hand-written bad requests (bodies, headers, methods, framing), seeded random
mutations of valid bodies (byte flips, cuts, insertions, duplications), and a schemathesis run over /openapi.json.
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

CORPUS = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "retrieval_corpus.jsonl")

GOOD = [
    b'{"queries": ["Who founded Brantis?", "cave cheese"], "topk": 3, "return_scores": true}',
    b'{"query": "copper bridges", "topk": 2, "return_scores": true}',
    b'{"queries": ["tin mines"]}',
]

# (name, raw body) sent as POST /retrieve with Content-Type: application/json.
BAD_BODIES = [
    ("empty", b""),
    ("whitespace", b"  \n\t "),
    ("not json", b"{not json"),
    ("truncated", b'{"queries": ["a"'),
    ("trailing garbage", b'{"queries": ["a"]} x'),
    ("invalid utf-8", b'{"queries": ["\xff\xfe"]}'),
    ("utf-16 bom", '{"queries": ["a"]}'.encode("utf-16")),
    ("NaN topk", b'{"queries": ["a"], "topk": NaN}'),
    ("Infinity topk", b'{"queries": ["a"], "topk": Infinity}'),
    ("-Infinity score flag", b'{"queries": ["a"], "return_scores": -Infinity}'),
    ("NaN inside list", b'{"queries": [NaN]}'),
    ("NaN in an ignored field", b'{"queries": ["a"], "extra": NaN}'),
    ("1e400 topk", b'{"queries": ["a"], "topk": 1e400}'),
    ("5000-digit topk", b'{"queries": ["a"], "topk": ' + b"9" * 5000 + b"}"),
    ("negative topk", b'{"queries": ["a"], "topk": -3}'),
    ("float topk", b'{"queries": ["a"], "topk": 2.5}'),
    ("bool topk", b'{"queries": ["a"], "topk": true}'),
    ("string topk", b'{"queries": ["a"], "topk": "3"}'),
    ("list topk", b'{"queries": ["a"], "topk": [3]}'),
    ("object topk", b'{"queries": ["a"], "topk": {"k": 3}}'),
    ("string return_scores", b'{"queries": ["a"], "return_scores": "true"}'),
    ("int return_scores", b'{"queries": ["a"], "return_scores": 1}'),
    ("array body", b'["a", "b"]'),
    ("string body", b'"who wrote hamlet"'),
    ("number body", b"42"),
    ("null body", b"null"),
    ("no queries", b'{"topk": 3}'),
    ("queries and query", b'{"queries": ["a"], "query": "b"}'),
    ("queries string", b'{"queries": "a"}'),
    ("queries object", b'{"queries": {"0": "a"}}'),
    ("queries null", b'{"queries": null}'),
    ("query list", b'{"query": ["a"]}'),
    ("query number", b'{"query": 3}'),
    ("query null", b'{"query": null}'),
    ("int in queries", b'{"queries": ["a", 1]}'),
    ("null in queries", b'{"queries": [null]}'),
    ("nested list in queries", b'{"queries": [["a"]]}'),
    ("lone surrogate query", b'{"queries": ["\\ud800"]}'),
    ("lone low surrogate query", b'{"query": "x\\udc00y"}'),
    ("too many queries", json.dumps({"queries": ["a"] * 5000}).encode()),
    ("query too long", json.dumps({"queries": ["a" * 5000]}).encode()),
    ("deep arrays", b"[" * 200_000 + b"]" * 200_000),
    ("deep objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ("duplicate keys", b'{"queries": ["a"], "queries": 3}'),
    ("bare NUL", b"\x00"),
]


# A body can break the schema (too many queries) and the body limit at once; 413 is then the right answer, and the
# schema documents it, but schemathesis's list of expected refusals lacks it by default.
SCHEMATHESIS_CONFIG = """[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""


def _exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[int | None, bytes]:
    """Sends raw bytes, reads one answer; (status, body) or (None, why) when none came."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return None, b"closed without an answer"
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lowered = head.lower()
            if b"content-length:" in lowered:
                length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            return int(head.split(b" ")[1]), body
    except (TimeoutError, OSError) as error:
        return None, str(error).encode()


def _post(body: bytes, extra_headers: bytes = b"") -> bytes:
    return (
        b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + extra_headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def _judge(status, body) -> str | None:
    """None if the answer is a clear refusal (4xx with a JSON detail), else what is wrong with it."""
    if status is None:
        return f"no answer ({body[:80]!r})"
    if status >= 500:
        return f"HTTP {status}: {body[:200]!r}"
    if not 400 <= status < 500:
        return f"accepted with HTTP {status}"
    if status == 400 and b"detail" not in body and body.startswith(b"Invalid"):
        return None  # the HTTP parser's own refusal of broken framing (before the application)
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status} without a JSON detail: {body[:120]!r}"
    return None if isinstance(detail, str) and detail else f"HTTP {status} with an empty detail"


def hand_written(port: int) -> list[tuple[str, str | None]]:
    cases = [(name, _post(body)) for name, body in BAD_BODIES]
    cases += [
        ("GET /retrieve", b"GET /retrieve HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("PUT /retrieve", b"PUT /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"),
        ("DELETE /retrieve", b"DELETE /retrieve HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        (
            "Content-Length over the limit",
            b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
        ),
        (
            "Content-Length shorter than body",
            b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n" + GOOD[0],
        ),
        ("negative Content-Length", b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}"),
        (
            "bad chunk size",
            b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "chunked over the limit",
            b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"100000\r\n" + b" " * 0x100000 + b"\r\n") * 3
            + b"0\r\n\r\n",
        ),
        ("X-Request-Timeout garbage", _post(GOOD[2], b"X-Request-Timeout: soon\r\n")),
        ("form content type", _post(b"queries=a").replace(b"application/json", b"application/x-www-form-urlencoded")),
    ]
    results = []
    for name, request in cases:
        status, body = _exchange(port, request)
        problem = _judge(status, body)
        if name == "X-Request-Timeout garbage":  # a valid body: the header is ignored, the answer is 200
            problem = None if status == 200 else f"HTTP {status}"
        results.append((name, problem))
    return results


def mutations(port: int, count: int, seed: int) -> tuple[dict, list[str]]:
    rng = random.Random(seed)
    statuses, problems = {}, []
    for _ in range(count):
        body = bytearray(rng.choice(GOOD))
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(5)
            at = rng.randrange(len(body) + 1)
            if kind == 0 and body:
                body[min(at, len(body) - 1)] = rng.randrange(256)
            elif kind == 1:
                del body[at:]
            elif kind == 2:
                body[at:at] = rng.choice(
                    [b"NaN", b"[", b"{", b'"', b"\\", b"\\ud800", b",", b"null", b"1e999", b"\x00"]
                )
            elif kind == 3 and body:
                start = rng.randrange(len(body))
                body[at:at] = body[start : start + rng.randint(1, 20)]
            else:
                body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        status, answer = _exchange(port, _post(bytes(body)))
        statuses[status] = statuses.get(status, 0) + 1
        if status is None or status >= 500 or (status >= 400 and _judge(status, answer) is not None):
            problems.append(f"{bytes(body)[:80]!r} -> {status} {answer[:120]!r}")
    return statuses, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=2000)
    parser.add_argument("--schemathesis-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from trl_search.retrievers import BM25Retriever

    workdir = tempfile.mkdtemp(prefix="bench-server-hostile-")
    BM25Retriever.build(CORPUS).save(os.path.join(workdir, "index"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "trl_search.cli", "serve", "--retriever", os.path.join(workdir, "index")]
    server = subprocess.Popen([*command, "--port", str(port), "--max-body-bytes", "2000000"], stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if _exchange(port, _post(GOOD[2]), timeout=1)[0] == 200:
                break
            time.sleep(0.1)
        written = hand_written(port)
        failed = [(name, problem) for name, problem in written if problem]
        print(f"hand-written bad requests: {len(written)} tried, {len(failed)} failed")
        for name, problem in failed:
            print(f"  {name}: {problem}")
        statuses, problems = mutations(port, args.mutations, args.seed)
        print(
            f"mutated bodies (seed {args.seed}): {args.mutations} tried, {len(problems)} failed; statuses {statuses}"
        )
        for problem in problems[:10]:
            print(f"  {problem}")
        executable = shutil.which("schemathesis")
        if executable and args.schemathesis_examples:
            config = os.path.join(workdir, "schemathesis.toml")
            with open(config, "w") as handle:
                handle.write(SCHEMATHESIS_CONFIG)
            result = subprocess.run(
                [executable, "--config-file", config, "run", f"http://127.0.0.1:{port}/openapi.json"]
                + ["--checks", "all", "--mode", "all"]
                + ["--max-examples", str(args.schemathesis_examples), "--seed", str(args.seed), "--no-color"],
                capture_output=True,
                text=True,
            )
            summary = [line.strip() for line in result.stdout.splitlines() if "generated" in line or "issues" in line]
            print(f"schemathesis (all checks, {args.schemathesis_examples} examples): {' / '.join(summary)}")
            if result.returncode != 0:
                print(result.stdout[-6000:])
        alive = server.poll() is None and _exchange(port, _post(GOOD[0]))[0] == 200
        print(f"server alive and answering after all trials: {alive}")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
