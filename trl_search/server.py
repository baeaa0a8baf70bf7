"""HTTP retrieval server speaking Search-R1's `/retrieve` contract, merging concurrent requests into fair batches.

POST /retrieve  {"queries": ["..."], "topk": 3, "return_scores": true}     (Search-R1, verl)
                {"query": "...", "topk": 3, "return_scores": true}         (SkyRL: one query)
  -> {"result": [[{"document": {"id": "...", "contents": "\\"Title\\"\\ntext"}, "score": 1.2}, ...], ...]}
  (one list of hits per query; with "return_scores": false each hit is the bare document, as in Search-R1)
GET /health     -> {"status": "ok", ...}
GET /openapi.json, /docs: the contract above as an OpenAPI schema.

`/retrieve` is served by a plain ASGI handler (no per-request framework layers): it checks the bearer token before
reading the body, enforces the body limit while the body streams in (chunked or not), parses and validates the
JSON itself, and hands the queries to `BatchingSearcher`, which splits large requests into slices and interleaves
them with other requests, drops the work of clients that hung up or whose deadline passed, and refuses new work
with 503 + Retry-After when its queue is full.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring, encode_basestring_ascii

from .retrievers.base import Passage, Retriever


def _require_server_deps():
    try:
        import fastapi
        import uvicorn
    except ImportError as error:
        raise ImportError("The retrieval server needs `pip install trl-search[server]` (fastapi, uvicorn).") from error
    return fastapi, uvicorn


@dataclass
class ServerConfig:
    """Limits, batching and backpressure of the retrieval server.

    Example:
        >>> ServerConfig(max_topk=20).max_topk
        20
    """

    default_topk: int = field(
        default=3, metadata={"help": "Passages per query when a request's topk is missing, null or 0 (Search-R1: 3)."}
    )
    max_queries: int = field(default=4096, metadata={"help": "Queries per request; more gets HTTP 422."})
    max_query_chars: int = field(default=4096, metadata={"help": "Characters per query; longer gets HTTP 422."})
    max_topk: int = field(
        default=100,
        metadata={"help": "Largest topk served; a larger one is clamped to it and the answer says so in a header."},
    )
    max_body_bytes: int = field(
        default=32 * 1024 * 1024, metadata={"help": "Request body size; more gets HTTP 413, counted as it streams."}
    )
    batch_wait_ms: float = field(
        default=2.0,
        metadata={"help": "How long a batch may wait for requests still being received to join it."},
    )
    max_batch_queries: int = field(
        default=512,
        metadata={
            "help": "Queries per retriever call. Larger requests are split into slices interleaved with other "
            "requests, so a small request waits at most about one batch."
        },
    )
    max_queued_queries: int = field(
        default=65536,
        metadata={"help": "Queries waiting to be searched; a request that would exceed it gets 503 + Retry-After."},
    )
    request_timeout_s: float = field(
        default=300.0,
        metadata={
            "help": "Deadline of a request; its unsearched work is dropped after it (503). A client may ask for a "
            "shorter one with the X-Request-Timeout header (seconds), as RemoteRetriever does."
        },
    )
    search_threads: int = field(
        default=1,
        metadata={
            "help": "Batches searched at the same time. More than 1 helps only retrievers that release the GIL "
            "(the bm25s numba kernel, FAISS); each thread holds one batch's results."
        },
    )
    retry_after_s: int = field(default=1, metadata={"help": "Retry-After seconds sent with 503 answers."})
    token: str | None = field(
        default=None, metadata={"help": "When set, /retrieve requires `Authorization: Bearer <token>`."}
    )

    def __post_init__(self):
        for name in (
            "default_topk",
            "max_queries",
            "max_query_chars",
            "max_topk",
            "max_body_bytes",
            "max_batch_queries",
            "max_queued_queries",
            "search_threads",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServerConfig.{name} must be an integer >= 1; got {value!r}.")
        if self.default_topk > self.max_topk:
            raise ValueError(f"default_topk ({self.default_topk}) must not exceed max_topk ({self.max_topk}).")
        if self.max_queued_queries < self.max_queries:
            raise ValueError(
                f"max_queued_queries ({self.max_queued_queries}) must be >= max_queries ({self.max_queries}), "
                "or a maximal request could never be queued."
            )
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0; got {self.batch_wait_ms}.")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0; got {self.request_timeout_s}.")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0; got {self.retry_after_s}.")
        if self.token is not None and not self.token:
            raise ValueError("token must be a non-empty string, or None for no authentication.")


# ----- the request: parsing and validation ----------------------------------------------------------------------


class RequestError(ValueError):
    """A request the server refuses: `status` is the HTTP status, the message says what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class RetrieveRequest:
    """A validated `/retrieve` body: `k` is what will be served, `requested_k` what was asked (clamping)."""

    queries: list[str]
    k: int
    requested_k: int
    return_scores: bool


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_request(body: bytes, config: ServerConfig) -> RetrieveRequest:
    """Parses and validates a `/retrieve` body, as Search-R1's server reads it, plus SkyRL's single `query`.

    `topk` missing, null or 0 means `config.default_topk` (Search-R1 treats any falsy topk so); a `topk` above
    `config.max_topk` is clamped to it. Raises `RequestError` (400: not JSON; 422: JSON of the wrong shape).

    Example:
        >>> parse_request(b'{"query": "who wrote hamlet", "topk": 0}', ServerConfig())
        RetrieveRequest(queries=['who wrote hamlet'], k=3, requested_k=3, return_scores=False)
    """
    if not body.strip():
        raise RequestError(400, 'Empty body: send JSON such as {"queries": ["who wrote hamlet"], "topk": 3}.')
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as error:
        raise RequestError(400, f"The body is not UTF-8 encoded JSON: {error}.") from None
    except ValueError as error:  # JSONDecodeError, NaN/Infinity, an integer of more than 4300 digits
        raise RequestError(400, f"The body is not valid JSON: {error}.") from None
    except RecursionError:
        raise RequestError(400, "The body nests JSON arrays or objects too deeply.") from None
    if not isinstance(data, dict):
        raise RequestError(
            422,
            f'The body must be a JSON object such as {{"queries": ["..."], "topk": 3}}; got {type(data).__name__}.',
        )
    if "queries" in data and "query" in data:
        raise RequestError(422, "Send either 'queries' (a list) or 'query' (one string), not both.")
    if "queries" in data:
        queries = data["queries"]
        if not isinstance(queries, list):
            raise RequestError(422, f"'queries' must be a list of strings; got {type(queries).__name__}.")
        for index, query in enumerate(queries):
            if not isinstance(query, str):
                raise RequestError(422, f"queries[{index}] must be a string; got {type(query).__name__}.")
    elif "query" in data:
        if not isinstance(data["query"], str):
            raise RequestError(422, f"'query' must be a string; got {type(data['query']).__name__}.")
        queries = [data["query"]]
    else:
        raise RequestError(422, "Missing 'queries' (a list of strings) or 'query' (one string).")
    if len(queries) > config.max_queries:
        raise RequestError(
            422, f"{len(queries)} queries exceed the server limit max_queries={config.max_queries}; split the batch."
        )
    for index, query in enumerate(queries):
        if len(query) > config.max_query_chars:
            raise RequestError(
                422,
                f"queries[{index}] has {len(query)} characters, over the server limit "
                f"max_query_chars={config.max_query_chars}.",
            )
        if not _is_valid_unicode(query):
            raise RequestError(422, f"queries[{index}] contains a lone surrogate (\\ud800-\\udfff); send valid text.")

    topk = data.get("topk")
    if isinstance(topk, float) and topk.is_integer():
        topk = int(topk)
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int)):
        raise RequestError(422, f"'topk' must be an integer or null; got {json.dumps(topk)[:50]}.")
    if topk is not None and topk < 0:
        raise RequestError(422, f"'topk' must be >= 0 (0 or null: the server default); got {topk}.")
    requested_k = topk or config.default_topk
    return_scores = data.get("return_scores")
    if return_scores is not None and not isinstance(return_scores, bool):
        raise RequestError(422, f"'return_scores' must be true or false; got {json.dumps(return_scores)[:50]}.")
    return RetrieveRequest(queries, min(requested_k, config.max_topk), requested_k, bool(return_scores))


_HIT = '{"document":{"id":%s,"contents":%s},"score":%r}'
_DOCUMENT = '{"id":%s,"contents":%s}'


def _encode_rows(hits: list[list[Passage]], return_scores: bool, quote) -> str:
    if return_scores:
        for row in hits:
            for passage in row:
                if not math.isfinite(passage.score):
                    raise ValueError(f"the retriever gave passage {passage.id!r} the score {passage.score}")
        rows = (",".join(_HIT % (quote(p.id), quote(p.contents), float(p.score)) for p in row) for row in hits)
    else:
        rows = (",".join(_DOCUMENT % (quote(p.id), quote(p.contents)) for p in row) for row in hits)
    return ",".join(f"[{row}]" for row in rows)


def encode_hits(hits: list[list[Passage]], return_scores: bool) -> bytes:
    """The JSON of a list of per-query hit lists, without the outer brackets (so slices can be concatenated).

    `contents` is returned verbatim; text that is not valid Unicode (a lone surrogate) is sent \\u-escaped.
    Written with the json module's string encoder directly, without building a dict per hit.

    Example:
        >>> encode_hits([[Passage.from_contents("7", '"Paris"\\nParis is in France.', 1.5)]], True)
        b'[{"document":{"id":"7","contents":"\\\\"Paris\\\\"\\\\nParis is in France."},"score":1.5}]'
    """
    try:
        return _encode_rows(hits, return_scores, encode_basestring).encode("utf-8")
    except UnicodeEncodeError:
        return _encode_rows(hits, return_scores, encode_basestring_ascii).encode("ascii")


# ----- batching, fairness and backpressure ----------------------------------------------------------------------


class QueueFullError(RuntimeError):
    """The server's queue of unsearched queries is full (answered 503 + Retry-After)."""


class SearchJob:
    """One request's queries in the batcher: searched in slices, encoded slice by slice, answered in order."""

    __slots__ = ("queries", "k", "encode", "deadline", "scheduled", "running", "fragments", "future", "cancelled")

    def __init__(self, queries: list[str], k: int, encode: Callable, deadline: float, future: asyncio.Future):
        self.queries = queries
        self.k = k
        self.encode = encode
        self.deadline = deadline
        self.scheduled = 0  # queries handed to a batch so far
        self.running = 0  # slices in flight
        self.fragments: dict[int, bytes] = {}
        self.future = future
        self.cancelled = False

    @property
    def unscheduled(self) -> int:
        return len(self.queries) - self.scheduled


class BatchingSearcher:
    """Merges the queries of concurrent requests into batches, fairly, and searches them in worker threads.

    Each batch takes at most `max_batch_queries` queries, shared max-min fairly among the waiting requests in
    arrival order: a 1-query request waiting behind a maximal one joins the next batch instead of waiting for the
    whole maximal request. A batch waits (at most `wait_s`) for more only while other requests are still being
    received (`arriving`), so a lone client never waits. Slices of requests whose client hung up or whose deadline
    passed are dropped before they are searched. Requests asking for different `k` share a batch, searched once
    per `k`. `search_threads` batches may run at the same time.

    Example:
        >>> batcher = BatchingSearcher(retriever, wait_s=0.002)  # doctest: +SKIP
        >>> batcher.start()  # inside the running event loop  # doctest: +SKIP
        >>> job = batcher.submit(["who wrote hamlet"], 3, encode_hits_with_scores, deadline)  # doctest: +SKIP
        >>> fragments = await job.future  # doctest: +SKIP
    """

    def __init__(
        self,
        retriever: Retriever,
        wait_s: float = 0.002,
        max_batch_queries: int = 512,
        max_queued_queries: int = 65536,
        search_threads: int = 1,
    ):
        self.retriever = retriever
        self.wait_s = wait_s
        self.max_batch_queries = max_batch_queries
        self.max_queued_queries = max_queued_queries
        self.search_threads = search_threads
        self.batches = 0
        self.searches = 0  # retriever calls: one per distinct k in a batch
        self.queries = 0
        self.requests = 0
        self.dropped_queries = 0
        self.refused_requests = 0
        self.queued = 0  # queries submitted but not yet handed to a batch
        self.searching = 0  # queries in batches being searched
        self.arriving = 0  # requests being received, not yet submitted (a batch may wait for them)
        self._jobs: collections.deque[SearchJob] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.search_threads)
        self._executor = ThreadPoolExecutor(self.search_threads, thread_name_prefix="trl-search-batch")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, queries: list[str], k: int, encode: Callable, deadline: float) -> SearchJob:
        """Queues a request; raises `QueueFullError` when its queries would overflow the queue."""
        if self.queued + len(queries) > self.max_queued_queries:
            self.refused_requests += 1
            raise QueueFullError(
                f"The server has {self.queued} queries queued (limit max_queued_queries={self.max_queued_queries})."
            )
        job = SearchJob(queries, k, encode, deadline, asyncio.get_running_loop().create_future())
        self.requests += 1
        self.queued += len(queries)
        self._jobs.append(job)
        self._wake.set()
        return job

    def cancel(self, job: SearchJob) -> None:
        """Drops the job's unsearched slices (its client hung up or its deadline passed)."""
        if not job.cancelled:
            job.cancelled = True
            self.queued -= job.unscheduled
            self.dropped_queries += job.unscheduled
            job.scheduled = len(job.queries)

    def _take_batch(self) -> list[tuple[SearchJob, int, int]]:
        now = time.monotonic()
        for job in list(self._jobs):
            if not job.cancelled and now > job.deadline:
                self.cancel(job)
                if not job.future.done():
                    job.future.set_exception(TimeoutError("deadline passed before the request was searched"))
        jobs = [job for job in self._jobs if not job.cancelled and job.unscheduled]
        taken = dict.fromkeys(jobs, 0)
        capacity, active = self.max_batch_queries, jobs
        while capacity and active:  # water-filling: equal shares, leftovers to whoever still has queries
            share = max(1, capacity // len(active))
            for job in active:
                take = min(share, job.unscheduled - taken[job], capacity)
                taken[job] += take
                capacity -= take
                if not capacity:
                    break
            active = [job for job in active if job.unscheduled > taken[job]]
        batch = []
        for job, take in taken.items():
            if take:
                batch.append((job, job.scheduled, job.scheduled + take))
                job.scheduled += take
                job.running += 1
                self.queued -= take
        self._jobs = collections.deque(job for job in self._jobs if not job.cancelled and job.unscheduled)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.wait_s and self.arriving > 0:
                deadline = loop.time() + self.wait_s
                while self.arriving > 0 and loop.time() < deadline:
                    await asyncio.sleep(min(0.0005, deadline - loop.time()))
            await self._slots.acquire()
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            if self._jobs:
                self._wake.set()  # more queued: the next batch forms as soon as a search slot frees up
            self.searching += sum(end - start for _, start, end in batch)
            future = loop.run_in_executor(self._executor, self._search, batch)
            future.add_done_callback(lambda done, batch=batch: self._finish(batch, done))
            del future, batch  # held until the next batch otherwise, and with them a whole answer

    def _search(self, batch: list[tuple[SearchJob, int, int]]) -> list:
        """Worker thread: one retriever call per distinct k, then each slice encoded (errors kept per slice)."""
        by_k: dict[int, list] = {}
        for piece in batch:
            by_k.setdefault(piece[0].k, []).append(piece)
        out = []
        for k, pieces in by_k.items():
            queries = [query for job, start, end in pieces for query in job.queries[start:end]]
            try:
                hits = self.retriever.search(queries, k)
                if len(hits) != len(queries):
                    raise RuntimeError(f"the retriever answered {len(hits)} hit lists for {len(queries)} queries")
            except Exception as error:  # every waiter of this search gets the error; the batcher lives on
                out.extend((job, start, error) for job, start, _ in pieces)
                continue
            offset = 0
            for job, start, end in pieces:
                try:
                    out.append((job, start, job.encode(hits[offset : offset + end - start])))
                except Exception as error:
                    out.append((job, start, error))
                offset += end - start
            self.searches += 1
            self.queries += len(queries)
        self.batches += 1
        return out

    def _finish(self, batch, done: asyncio.Future) -> None:
        self._slots.release()
        self.searching -= sum(end - start for _, start, end in batch)
        self._wake.set()
        error = done.exception()
        results = [(job, start, error) for job, start, _ in batch] if error else done.result()
        for job, start, fragment in results:
            job.running -= 1
            if job.future.done():
                continue
            if isinstance(fragment, BaseException):
                job.future.set_exception(fragment)
                self.cancel(job)
                continue
            job.fragments[start] = fragment
            if not job.running and job.scheduled == len(job.queries) and not job.cancelled:
                job.future.set_result([job.fragments[key] for key in sorted(job.fragments)])
                job.fragments = {}  # the answer holds them now, and frees each one once it is sent


# ----- the ASGI application -------------------------------------------------------------------------------------


_JSON = [(b"content-type", b"application/json")]
# Requests of at most this many queries are not watched for a client hanging up (the watch costs a task each).
_UNWATCHED_QUERIES = 16


def _release_memory() -> None:
    """Gives freed heap pages back to the OS after a large answer (glibc keeps them otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _map_large_allocations(threshold: int = 1 << 20) -> None:
    """Makes glibc serve every allocation of `threshold` bytes or more with its own mapping, returned to the OS when
    freed. By default glibc raises that threshold after each large free (up to 32 MB), so the slices of large answers
    end up in the heap, which fragments and keeps its peak size after the load is gone. Called only in processes
    that are the server (`serve`), since it applies to the whole process."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _send_json(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send, status: int, message: str, headers: list | None = None) -> None:
    await _send_json(send, status, json.dumps({"detail": message}).encode(), headers)


def _openapi_paths(config: ServerConfig) -> dict:
    """The /retrieve operation as OpenAPI: exactly what `parse_request` accepts and what the handler answers."""
    query = {"type": "string", "maxLength": config.max_query_chars}
    error = {"$ref": "#/components/schemas/Error"}

    def error_response(description, headers=None):
        response = {"description": description, "content": {"application/json": {"schema": error}}}
        if headers:
            response["headers"] = headers
        return response

    body_schema = {
        "type": "object",
        "properties": {
            "queries": {"type": "array", "items": query, "maxItems": config.max_queries},
            "query": query,
            "topk": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": f"Passages per query; missing, null or 0: {config.default_topk}; above "
                f"{config.max_topk}: clamped (see the X-Topk-Clamped header).",
            },
            "return_scores": {"type": ["boolean", "null"], "description": "Hits as {document, score} when true."},
        },
        "oneOf": [{"required": ["queries"]}, {"required": ["query"]}],
        "example": {"queries": ["who wrote hamlet"], "topk": 3, "return_scores": True},
    }
    operation = {
        "summary": "Search-R1's retrieval contract (also SkyRL's single-query form)",
        "operationId": "retrieve",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
        "responses": {
            "200": {
                "description": "One list of hits per query, best first.",
                "headers": {
                    "X-Topk-Clamped": {
                        "description": "Present when topk exceeded max_topk: the requested and the served topk.",
                        "schema": {"type": "string"},
                    }
                },
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RetrieveResponse"}}},
            },
            "400": error_response("The body is not JSON (invalid syntax or UTF-8, NaN or Infinity, empty)."),
            "401": error_response(
                "Missing or wrong bearer token.", {"WWW-Authenticate": {"schema": {"type": "string"}}}
            ),
            "413": error_response(f"The body exceeds max_body_bytes={config.max_body_bytes}."),
            "422": error_response("JSON of the wrong shape, or over max_queries / max_query_chars."),
            "500": error_response("The retriever failed."),
            "503": error_response(
                "Queue full or deadline passed; retry after Retry-After seconds.",
                {"Retry-After": {"schema": {"type": "string"}}},
            ),
        },
    }
    if config.token is not None:
        operation["security"] = [{"bearer": []}]
    return {"/retrieve": {"post": operation}}


def _openapi_components(config: ServerConfig) -> dict:
    document = {
        "type": "object",
        "properties": {"id": {"type": "string"}, "contents": {"type": "string"}},
        "required": ["id", "contents"],
    }
    hit = {
        "type": "object",
        "properties": {"document": {"$ref": "#/components/schemas/Document"}, "score": {"type": "number"}},
        "required": ["document", "score"],
    }
    schemas = {
        "Document": document,
        "Hit": hit,
        "RetrieveResponse": {
            "type": "object",
            "properties": {
                "result": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "items": {"anyOf": [{"$ref": "#/components/schemas/Hit"}, document]},
                    },
                }
            },
            "required": ["result"],
        },
        "Error": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]},
    }
    components = {"schemas": schemas}
    if config.token is not None:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return components


class RetrievalServer:
    """The ASGI application: `/retrieve` handled directly, everything else (health, docs) by FastAPI.

    Example:
        >>> from trl_search.retrievers import BM25Retriever
        >>> app = RetrievalServer(BM25Retriever.build([{"id": "0", "contents": '"Paris"\\nParis is in France.'}]))
        >>> sorted(app.openapi()["paths"])
        ['/health', '/retrieve']
    """

    def __init__(self, retriever: Retriever, config: ServerConfig | None = None):
        fastapi, _ = _require_server_deps()
        from contextlib import asynccontextmanager

        self.retriever = retriever
        self.config = config = config or ServerConfig()
        self.batcher = BatchingSearcher(
            retriever,
            config.batch_wait_ms / 1000.0,
            config.max_batch_queries,
            config.max_queued_queries,
            config.search_threads,
        )
        self._token = f"Bearer {config.token}".encode() if config.token is not None else None
        started = time.time()

        @asynccontextmanager
        async def lifespan(app):
            self.batcher.start()
            yield
            await self.batcher.stop()

        api = fastapi.FastAPI(title="trl-search retrieval server", lifespan=lifespan)

        @api.get("/health")
        def health() -> dict:
            batcher = self.batcher
            return {
                "status": "ok",
                "retriever": retriever.describe(),
                "cache": retriever.stats() if hasattr(retriever, "stats") else None,
                "uptime_s": round(time.time() - started, 1),
                "requests": batcher.requests,
                "batches": batcher.batches,
                "searches": batcher.searches,
                "queries": batcher.queries,
                "queued_queries": batcher.queued,
                "searching_queries": batcher.searching,
                "dropped_queries": batcher.dropped_queries,
                "refused_requests": batcher.refused_requests,
                "limits": {key: value for key, value in asdict(config).items() if key != "token"},
            }

        default_openapi = api.openapi

        def openapi() -> dict:
            if api.openapi_schema is None:
                schema = default_openapi()
                schema["paths"].update(_openapi_paths(config))
                components = _openapi_components(config)
                schema.setdefault("components", {}).setdefault("schemas", {}).update(components.pop("schemas"))
                schema["components"].update(components)
            return api.openapi_schema

        api.openapi = openapi
        self.api = api

    def openapi(self) -> dict:
        return self.api.openapi()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/retrieve":
            await self._retrieve(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The body, counted against max_body_bytes as it arrives; None if the client hung up first."""
        limit = self.config.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RequestError(
                413, f"Request body of {int(length)} bytes exceeds the server limit max_body_bytes={limit}."
            )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"Request body exceeds the server limit max_body_bytes={limit}.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _retrieve(self, scope, receive, send) -> None:
        if scope["method"] != "POST":
            await _send_error(send, 405, "Method Not Allowed: use POST /retrieve.", [(b"allow", b"POST")])
            return
        if self._token is not None:  # before reading a byte of the body
            header = _header(scope, b"authorization") or b""
            if not secrets.compare_digest(header, self._token):
                await _send_error(
                    send,
                    401,
                    "Missing or wrong bearer token: send 'Authorization: Bearer <token>'.",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        # Counted as arriving until queued, so that a forming batch waits for it (at most batch_wait_ms).
        self.batcher.arriving += 1
        try:
            submitted = await self._submit(scope, receive, send)
        finally:
            self.batcher.arriving -= 1
        if submitted is not None:
            await self._answer(receive, send, *submitted)

    async def _submit(self, scope, receive, send):
        """Reads, validates and queues the request; answers it directly and returns None when there is no search."""
        config = self.config
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                return None
            request = parse_request(body, config)
        except RequestError as error:
            await _send_error(send, error.status, str(error))
            return None
        headers = []
        if request.k != request.requested_k:
            headers.append((b"x-topk-clamped", f"requested={request.requested_k}; served={request.k}".encode()))
        if not request.queries:
            await _send_json(send, 200, b'{"result":[]}', headers)
            return None
        timeout = config.request_timeout_s
        client_timeout = _header(scope, b"x-request-timeout")
        if client_timeout is not None:
            try:
                timeout = max(0.0, min(timeout, float(client_timeout)))
            except ValueError:
                pass
        return_scores = request.return_scores
        try:
            job = self.batcher.submit(
                request.queries, request.k, lambda hits: encode_hits(hits, return_scores), time.monotonic() + timeout
            )
        except QueueFullError as error:
            await self._send_unavailable(send, f"{error} Retry after {config.retry_after_s} s.")
            return None
        return job, timeout, headers

    async def _send_unavailable(self, send, message: str) -> None:
        await _send_error(send, 503, message, [(b"retry-after", str(self.config.retry_after_s).encode())])

    async def _answer(self, receive, send, job: SearchJob, timeout: float, headers: list) -> None:
        if len(job.queries) <= _UNWATCHED_QUERIES:
            # A few queries: little work to save if the client hangs up, and the batcher still expires it if it
            # waits past its deadline. Skipping the disconnect watch keeps a 1-query request cheap.
            try:
                await job.future
            except Exception:
                pass  # answered below
        else:
            hung_up = asyncio.ensure_future(receive())  # completes with http.disconnect when the client goes away
            try:
                await asyncio.wait((job.future, hung_up), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                hung_up.cancel()
            if not job.future.done():
                self.batcher.cancel(job)  # its unsearched slices are dropped
                job.future.cancel()
                if not hung_up.cancelled() and hung_up.done():
                    return  # the client hung up: nobody to answer
                await self._send_unavailable(
                    send, f"The request's deadline of {timeout:g} s passed before it was searched."
                )
                return
        error = job.future.exception()
        if isinstance(error, TimeoutError):
            await self._send_unavailable(
                send, f"The request's deadline of {timeout:g} s passed before it was searched."
            )
            return
        if error is not None:
            await _send_error(send, 500, f"The retriever failed: {type(error).__name__}: {error}")
            return
        fragments = job.future.result()
        del job
        size = len(b'{"result":[]}') + sum(len(fragment) for fragment in fragments) + max(len(fragments) - 1, 0)
        if size < 1 << 20:
            await _send_json(send, 200, b'{"result":[' + b",".join(fragments) + b"]}", headers)
            return
        # A large answer goes out slice by slice, without a second copy of it in memory.
        start_headers = [*_JSON, (b"content-length", str(size).encode()), *headers]
        await send({"type": "http.response.start", "status": 200, "headers": start_headers})
        await send({"type": "http.response.body", "body": b'{"result":[', "more_body": True})
        for index, fragment in enumerate(fragments):
            await send({"type": "http.response.body", "body": (b"," if index else b"") + fragment, "more_body": True})
            fragments[index] = b""
        await send({"type": "http.response.body", "body": b"]}"})
        del fragments
        if size >= 32 << 20:  # trimming walks the heap: worth it only after the largest answers
            await asyncio.get_running_loop().run_in_executor(None, _release_memory)


def create_app(retriever: Retriever, config: ServerConfig | None = None) -> RetrievalServer:
    """The ASGI application serving `retriever` (run it with uvicorn, or use `ServerThread` / `serve`).

    Example:
        >>> from trl_search.retrievers import BM25Retriever
        >>> app = create_app(BM25Retriever.build([{"id": "0", "title": "Paris", "text": "Paris is in France."}]))
        >>> app.config.default_topk
        3
    """
    return RetrievalServer(retriever, config)


class ServerThread:
    """Runs the server in a background thread of this process (tests, benchmarks, notebooks).

    Example:
        >>> from trl_search.retrievers import BM25Retriever, RemoteRetriever
        >>> retriever = BM25Retriever.build([{"id": "0", "title": "Paris", "text": "Paris is in France."}])
        >>> with ServerThread(retriever) as server:
        ...     RemoteRetriever(server.url).search(["paris"], k=1)[0][0].title
        'Paris'
    """

    def __init__(
        self, retriever: Retriever, host: str = "127.0.0.1", port: int = 0, config: ServerConfig | None = None
    ):
        _, uvicorn = _require_server_deps()
        app = create_app(retriever, config)
        self.app = app
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, proxy_headers=False)
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.host = host
        self.port = port

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.time() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"The retrieval server did not start on {self.host}:{self.port}.")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/retrieve"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# `trl-search serve --workers N` starts N processes; each builds its app from this environment variable.
WORKER_SPEC_ENV = "TRL_SEARCH_SERVE_SPEC"


def app_from_environment() -> RetrievalServer:
    """Uvicorn app factory for worker processes: opens the retriever named in `$TRL_SEARCH_SERVE_SPEC`."""
    from .retrievers import CachedRetriever, load_retriever

    _map_large_allocations()
    spec = json.loads(os.environ[WORKER_SPEC_ENV])
    retriever = load_retriever(spec["retriever"], **spec["options"])
    if spec.get("cache"):
        retriever = CachedRetriever(retriever, max_entries=spec["cache"])
    return RetrievalServer(retriever, ServerConfig(**spec["config"]))


def serve(
    retriever: Retriever | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServerConfig | None = None,
    workers: int = 1,
) -> None:
    """Serves `retriever` until interrupted (what `trl-search serve` runs).

    With `workers > 1`, the retriever is opened in each worker process from `$TRL_SEARCH_SERVE_SPEC` (set by
    `trl-search serve`) and `retriever` must be None.

    Example:
        >>> serve(load_retriever("indexes/wiki-bm25"), port=8000)  # doctest: +SKIP
    """
    _, uvicorn = _require_server_deps()
    _map_large_allocations()
    options = {"host": host, "port": port, "log_level": "info", "access_log": False, "proxy_headers": False}
    if workers > 1:
        if retriever is not None or WORKER_SPEC_ENV not in os.environ:
            raise ValueError(f"serve(workers>1) opens the retriever in each worker from ${WORKER_SPEC_ENV}.")
        uvicorn.run("trl_search.server:app_from_environment", factory=True, workers=workers, **options)
    else:
        uvicorn.run(create_app(retriever, config), **options)


__all__ = [
    "BatchingSearcher",
    "RequestError",
    "RetrievalServer",
    "RetrieveRequest",
    "ServerConfig",
    "ServerThread",
    "create_app",
    "encode_hits",
    "parse_request",
    "serve",
]
