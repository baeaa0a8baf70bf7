"""HTTP retrieval server speaking Search-R1's `/retrieve` contract, merging concurrent requests into one batch.

POST /retrieve  {"queries": ["..."], "topk": 3, "return_scores": true}
  -> {"result": [[{"document": {"id": "...", "contents": "\\"Title\\"\\ntext"}, "score": 1.2}, ...], ...]}
  (with "return_scores": false, each hit is the bare document, as in Search-R1)
GET /health     -> {"status": "ok", ...}
"""

import asyncio
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass

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
    """Limits and batching of the retrieval server.

    Args:
        default_topk: passages per query when a request has no `topk` (Search-R1: 3).
        max_queries: queries per request; more gets HTTP 413.
        max_query_chars: characters per query; longer gets HTTP 413.
        max_topk: largest `topk`; more gets HTTP 422.
        max_body_bytes: request body size; more gets HTTP 413 before the body is read.
        batch_wait_ms: after a request arrives, how long to wait for others to join its batch.
        max_batch_queries: most queries searched in one call to the retriever.
        token: when set, `/retrieve` requires `Authorization: Bearer <token>`.

    Example:
        >>> ServerConfig(max_topk=20).max_topk
        20
    """

    default_topk: int = 3
    max_queries: int = 4096
    max_query_chars: int = 4096
    max_topk: int = 100
    max_body_bytes: int = 32 * 1024 * 1024
    batch_wait_ms: float = 2.0
    max_batch_queries: int = 4096
    token: str | None = None

    def __post_init__(self):
        for name in (
            "default_topk",
            "max_queries",
            "max_query_chars",
            "max_topk",
            "max_body_bytes",
            "max_batch_queries",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be >= 1; got {getattr(self, name)}.")
        if self.default_topk > self.max_topk:
            raise ValueError(f"default_topk ({self.default_topk}) must not exceed max_topk ({self.max_topk}).")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0; got {self.batch_wait_ms}.")


class BatchingSearcher:
    """Collects the queries of concurrent requests and answers them with one `retriever.search` call.

    A batch takes every request already queued; it waits (at most `wait_s` after its first request) for more only
    while other requests are still being received (`arriving`), so a lone client never waits. Searches run one at a
    time in a worker thread, so requests arriving during a search form the next batch. Requests asking for different `k` share
    a batch: it is searched at the largest `k` and each request gets its prefix.

    Example:
        >>> batcher = BatchingSearcher(retriever, wait_s=0.002)  # doctest: +SKIP
        >>> batcher.start()  # inside the running event loop  # doctest: +SKIP
        >>> await batcher.search(["who wrote hamlet"], k=3)  # doctest: +SKIP
    """

    def __init__(self, retriever: Retriever, wait_s: float = 0.002, max_queries: int = 4096):
        self.retriever = retriever
        self.wait_s = wait_s
        self.max_queries = max_queries
        self.batches = 0
        self.queries = 0
        self.requests = 0
        self.arriving = 0  # requests received by the server but not yet queued here
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        future = asyncio.get_running_loop().create_future()
        self.requests += 1
        await self._queue.put((queries, k, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self._queue.get()]
            size = len(pending[0][0])
            deadline = loop.time() + self.wait_s
            while size < self.max_queries:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self.arriving <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                pending.append(item)
                size += len(item[0])
            queries = [query for request_queries, _, _ in pending for query in request_queries]
            k = max(request_k for _, request_k, _ in pending)
            try:
                results = await loop.run_in_executor(None, self.retriever.search, queries, k) if queries else []
            except Exception as error:  # one failing search must not kill the batcher; each waiter gets the error
                for _, _, future in pending:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.queries += len(queries)
            start = 0
            for request_queries, request_k, future in pending:
                answer = [hits[:request_k] for hits in results[start : start + len(request_queries)]]
                start += len(request_queries)
                if not future.done():
                    future.set_result(answer)


def _document(passage: Passage) -> dict:
    return {"id": passage.id, "contents": passage.contents}


def create_app(retriever: Retriever, config: ServerConfig | None = None):
    """The FastAPI application serving `retriever`.

    Example:
        >>> from trl_search.retrievers import BM25Retriever
        >>> app = create_app(BM25Retriever.build([{"id": "0", "title": "Paris", "text": "Paris is in France."}]))
        >>> sorted(route.path for route in app.routes if route.path in ("/retrieve", "/health"))
        ['/health', '/retrieve']
    """
    fastapi, _ = _require_server_deps()
    from contextlib import asynccontextmanager

    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

    config = config or ServerConfig()
    batcher = BatchingSearcher(retriever, config.batch_wait_ms / 1000.0, config.max_batch_queries)
    started = time.time()

    class RetrieveRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        queries: list[StrictStr]
        topk: int | None = None
        return_scores: StrictBool = False

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = fastapi.FastAPI(title="trl-search retrieval server", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.config = config

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            return JSONResponse(
                {
                    "detail": f"Request body of {length} bytes exceeds the server limit max_body_bytes={config.max_body_bytes}."
                },
                status_code=413,
            )
        if request.url.path != "/retrieve":
            return await call_next(request)
        # Count the request as arriving until the endpoint queues it (or it fails), so batches wait only for it.
        batcher.arriving += 1
        request.state.arriving = True
        try:
            return await call_next(request)
        finally:
            if request.state.arriving:
                batcher.arriving -= 1

    def error(status: int, message: str):
        return JSONResponse({"detail": message}, status_code=status)

    @app.post("/retrieve")
    async def retrieve(body: RetrieveRequest, request: Request):
        if config.token is not None:
            header = request.headers.get("authorization", "")
            if not secrets.compare_digest(header.encode(), f"Bearer {config.token}".encode()):
                return JSONResponse(
                    {"detail": "Missing or wrong bearer token: send 'Authorization: Bearer <token>'."},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        k = config.default_topk if body.topk is None else body.topk
        if k < 1:
            return error(422, f"topk must be >= 1; got {k}.")
        if k > config.max_topk:
            return error(422, f"topk={k} exceeds the server limit max_topk={config.max_topk}.")
        if len(body.queries) > config.max_queries:
            return error(
                413,
                f"{len(body.queries)} queries exceed the server limit max_queries={config.max_queries} per request; "
                "split the batch.",
            )
        longest = max((len(query) for query in body.queries), default=0)
        if longest > config.max_query_chars:
            return error(
                413,
                f"A query of {longest} characters exceeds the server limit max_query_chars={config.max_query_chars}.",
            )
        batcher.arriving -= 1
        request.state.arriving = False
        results = await batcher.search(body.queries, k) if body.queries else []
        if body.return_scores:
            payload = [[{"document": _document(p), "score": p.score} for p in hits] for hits in results]
        else:
            payload = [[_document(p) for p in hits] for hits in results]
        # Serialise directly: FastAPI's generic encoder is several times slower on thousands of passages.
        return Response(json.dumps({"result": payload}, ensure_ascii=False), media_type="application/json")

    @app.get("/health")
    async def health():
        cache = retriever.stats() if hasattr(retriever, "stats") else None
        return {
            "cache": cache,
            "status": "ok",
            "retriever": retriever.describe(),
            "uptime_s": round(time.time() - started, 1),
            "requests": batcher.requests,
            "batches": batcher.batches,
            "queries": batcher.queries,
            "limits": {key: value for key, value in asdict(config).items() if key != "token"},
        }

    return app


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
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.host = host
        self.port = port

    def start(self) -> "ServerThread":
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

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(retriever: Retriever, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None) -> None:
    """Serves `retriever` until interrupted (what `trl-search serve` runs).

    Example:
        >>> serve(load_retriever("indexes/wiki-bm25"), port=8000)  # doctest: +SKIP
    """
    _, uvicorn = _require_server_deps()
    uvicorn.run(create_app(retriever, config), host=host, port=port, log_level="info", access_log=False)
