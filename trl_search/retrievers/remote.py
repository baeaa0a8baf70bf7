"""Client for Search-R1's `/retrieve` HTTP contract (our `trl-search serve`, or Search-R1's own server)."""

from __future__ import annotations

import os
import time
import warnings

from .base import Passage, Retriever


class RetrieverUnavailableError(ConnectionError):
    """The retrieval server could not be reached (or kept failing) after every retry.

    Example:
        >>> RemoteRetriever("http://127.0.0.1:9/retrieve", retries=0).search(["q"], 3)  # doctest: +SKIP
        RetrieverUnavailableError: The retrieval server at http://127.0.0.1:9/retrieve is unavailable after 1 attempts ...
    """


class RetrieverRequestError(ValueError):
    """The retrieval server rejected a request (4xx) or answered something that is not the /retrieve contract.

    Example:
        >>> RemoteRetriever(url, token="wrong").search(["q"], 3)  # doctest: +SKIP
        RetrieverRequestError: The retrieval server at ... rejected the request (HTTP 401): ...
    """


def passage_from_document(document: dict, score: float = 0.0) -> Passage:
    """Reads one `document` of a /retrieve answer: `{"id", "contents"}` (title on the first line), or title/text.

    Search-R1's BM25 server omits `id`; it becomes `""`.

    Example:
        >>> passage_from_document({"id": "7", "contents": '"Paris"\\nParis is in France.'}, 1.5).contents
        '"Paris"\\nParis is in France.'
    """
    if not isinstance(document, dict):
        raise RetrieverRequestError(f"Expected a document object in the /retrieve answer, got {document!r:.200}.")
    doc_id = str(document.get("id", ""))
    if "contents" in document:
        return Passage.from_contents(doc_id, str(document["contents"]), float(score))
    return Passage(doc_id, str(document.get("title", "")), str(document.get("text", "")), float(score))


# Options a retriever URL may carry in its query string, e.g. http://host:8000/retrieve?retries=20&timeout=30.
URL_OPTIONS = {"retries": int, "timeout": float, "backoff": float, "max_backoff": float, "max_batch_size": int}


def split_url_options(url: str) -> tuple[str, dict]:
    """Splits a retriever URL into the endpoint and the `RemoteRetriever` options in its query string.

    Example:
        >>> split_url_options("http://127.0.0.1:8000/retrieve?retries=20&timeout=30")
        ('http://127.0.0.1:8000/retrieve', {'retries': 20, 'timeout': 30.0})
    """
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    parts = urlsplit(url)
    options = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            raise ValueError(
                f"Unknown option {name!r} in the retriever URL {url!r}; known: {', '.join(URL_OPTIONS)} "
                "(e.g. http://127.0.0.1:8000/retrieve?retries=20&timeout=30)."
            )
        if name in options:
            raise ValueError(f"Option {name!r} appears twice in the retriever URL {url!r}.")
        try:
            options[name] = URL_OPTIONS[name](value)
        except ValueError:
            raise ValueError(
                f"Option {name}={value!r} in the retriever URL {url!r} must be "
                f"{'an integer' if URL_OPTIONS[name] is int else 'a number'}."
            ) from None
    return urlunsplit(parts._replace(query="")), options


class RemoteRetriever(Retriever):
    """Searches through a `/retrieve` server: `{"queries": [...], "topk": k, "return_scores": true}`.

    Large batches are split into requests of at most `max_batch_size` queries over one keep-alive connection pool.
    Connection errors, dropped connections, timeouts and 5xx answers are retried `retries` times, waiting
    `backoff`, 2x, 4x... seconds (at most `max_backoff`, or what a 503's Retry-After asks): by default 37.5 s of
    waiting in all, which rides out a server restart of 30 s. Then `RetrieverUnavailableError` names the URL and how to wait longer. A 4xx
    answer raises `RetrieverRequestError` with the server's explanation, without retrying. The options can also
    be given in the URL's query string (`http://host:8000/retrieve?retries=20&timeout=30`), which is how a URL
    named in a config or on a command line sets them.

    Args:
        url: the full endpoint, as Search-R1 configures it: `http://127.0.0.1:8000/retrieve`.
        retries: attempts after the first one before giving up.
        timeout: seconds to wait for each answer (also sent to the server, which drops the work after it).
        backoff: seconds before the first retry; doubled on each further one.
        max_backoff: longest wait between two attempts.
        max_batch_size: queries per request.
        token: bearer token for a server started with `--token` (default: `$TRL_SEARCH_TOKEN`).

    Example:
        >>> retriever = RemoteRetriever("http://127.0.0.1:8000/retrieve", retries=20)  # doctest: +SKIP
        >>> retriever.search(["who wrote hamlet"], k=3)  # doctest: +SKIP
    """

    # 10 retries with backoff 0.5 s doubling up to 5 s wait 37.5 s in all: longer than a 30 s server restart.
    DEFAULTS = {"retries": 10, "timeout": 60.0, "backoff": 0.5, "max_backoff": 5.0, "max_batch_size": 512}

    def __init__(
        self,
        url: str,
        *,
        retries: int | None = None,
        timeout: float | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        max_batch_size: int | None = None,
        token: str | None = None,
    ):
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(
                f"RemoteRetriever needs an http(s):// URL such as http://127.0.0.1:8000/retrieve; got {url!r}."
            )
        endpoint, from_url = split_url_options(str(url))
        given = {
            "retries": retries,
            "timeout": timeout,
            "backoff": backoff,
            "max_backoff": max_backoff,
            "max_batch_size": max_batch_size,
        }
        both = [name for name, value in given.items() if value is not None and name in from_url]
        if both:
            raise ValueError(f"{', '.join(both)} given both as an argument and in the URL {url!r}; give it once.")
        settings = {**self.DEFAULTS, **from_url, **{name: value for name, value in given.items() if value is not None}}
        if settings["retries"] < 0 or settings["backoff"] < 0 or settings["max_backoff"] < 0:
            raise ValueError("retries, backoff and max_backoff must be >= 0.")
        if not settings["timeout"] > 0 or settings["max_batch_size"] < 1:
            raise ValueError("timeout must be > 0 and max_batch_size >= 1.")
        self.url = endpoint
        self.retries = settings["retries"]
        self.timeout = settings["timeout"]
        self.backoff = settings["backoff"]
        self.max_backoff = settings["max_backoff"]
        self.max_batch_size = settings["max_batch_size"]
        self.token = token if token is not None else os.environ.get("TRL_SEARCH_TOKEN")
        self._session = None
        self._warned_clamp = False

    @property
    def session(self):
        if self._session is None:
            try:
                import requests
                from requests.adapters import HTTPAdapter
            except ImportError as error:
                raise ImportError("RemoteRetriever needs `pip install trl-search[server]` (requests).") from error
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=16))
            session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=16))
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
            self._session = session
        return self._session

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_session"] = None  # sessions hold sockets; each process opens its own
        return state

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        self._check_search_args(queries, k)
        results = []
        for start in range(0, len(queries), self.max_batch_size):
            chunk = [str(query) for query in queries[start : start + self.max_batch_size]]
            results.extend(self._post(chunk, k))
        return results

    def _post(self, queries: list[str], k: int) -> list[list[Passage]]:
        import requests

        payload = {"queries": queries, "topk": k, "return_scores": True}
        headers = {"X-Request-Timeout": f"{self.timeout:g}"}
        # Transport failures worth another try: refused or dropped connections, timeouts, answers cut short.
        retryable = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
        last_error, wait, started = None, 0.0, time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(wait)
            wait = min(self.backoff * 2**attempt, self.max_backoff)
            try:
                response = self.session.post(self.url, json=payload, headers=headers, timeout=self.timeout)
                if response.status_code < 400:
                    result = self._parse(response, len(queries), k)
            except retryable as error:
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                retry_after = response.headers.get("Retry-After", "")
                if response.status_code == 503 and retry_after.isdigit():
                    wait = max(wait, min(float(retry_after), self.max_backoff))
                continue
            if response.status_code >= 400:
                raise RetrieverRequestError(
                    f"The retrieval server at {self.url} rejected the request (HTTP {response.status_code}): "
                    f"{response.text[:500]}"
                )
            clamped = response.headers.get("X-Topk-Clamped")
            if clamped and not self._warned_clamp:
                self._warned_clamp = True
                warnings.warn(
                    f"The retrieval server at {self.url} serves fewer passages per query than asked ({clamped}); "
                    "raise its --max-topk or lower k.",
                    stacklevel=3,
                )
            return result
        raise RetrieverUnavailableError(
            f"The retrieval server at {self.url} is unavailable after {self.retries + 1} attempts over "
            f"{time.monotonic() - started:.1f} s (last error: {last_error}). Start it with `trl-search serve "
            f"--retriever INDEX` or check the URL; to wait longer, raise `retries` "
            f"(RemoteRetriever(url, retries=N) or {self.url}?retries=N)."
        )

    def _parse(self, response, n_queries: int, k: int) -> list[list[Passage]]:
        try:
            result = response.json()["result"]
        except (ValueError, KeyError, TypeError) as error:
            raise RetrieverRequestError(
                f"{self.url} did not answer with the /retrieve contract ({{'result': [...]}}): {response.text[:300]}"
            ) from error
        if not isinstance(result, list) or len(result) != n_queries:
            count = len(result) if isinstance(result, list) else type(result).__name__
            raise RetrieverRequestError(f"{self.url} answered {count} result lists for {n_queries} queries.")
        passages = []
        for hits in result:
            if not isinstance(hits, list):
                raise RetrieverRequestError(f"{self.url} answered a hit list that is not a list: {hits!r:.200}.")
            row = []
            for hit in hits[:k]:
                if isinstance(hit, dict) and "document" in hit:
                    row.append(passage_from_document(hit["document"], hit.get("score", 0.0)))
                else:  # a server asked for scores may still send bare documents
                    row.append(passage_from_document(hit))
            passages.append(row)
        return passages

    def health(self) -> dict:
        """The server's `GET /health` answer (raises `RetrieverUnavailableError` when it is down)."""
        import requests

        url = self.url.rsplit("/", 1)[0] + "/health"
        try:
            response = self.session.get(url, timeout=self.timeout)
            response.raise_for_status()
            return response.json()
        except requests.RequestException as error:
            raise RetrieverUnavailableError(f"The retrieval server at {url} is unavailable: {error}") from error

    def describe(self) -> dict:
        return {"class": type(self).__name__, "kind": "remote", "url": self.url}
