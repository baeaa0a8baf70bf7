"""Client for Search-R1's `/retrieve` HTTP contract (our `trl-search serve`, or Search-R1's own server)."""

from __future__ import annotations

import os
import time

from .base import Passage, Retriever


class RetrieverUnavailableError(ConnectionError):
    """The retrieval server could not be reached (or kept failing) after every retry.

    Example:
        >>> RemoteRetriever("http://127.0.0.1:9/retrieve", max_retries=0).search(["q"], 3)  # doctest: +SKIP
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


class RemoteRetriever(Retriever):
    """Searches through a `/retrieve` server: `{"queries": [...], "topk": k, "return_scores": true}`.

    Large batches are split into requests of at most `max_batch_size` queries over one keep-alive connection pool.
    Connection errors, timeouts and 5xx answers are retried `max_retries` times with exponential backoff
    (`backoff`, 2x, 4x... seconds); then `RetrieverUnavailableError` names the URL. A 4xx answer raises
    `RetrieverRequestError` with the server's explanation, without retrying.

    Args:
        url: the full endpoint, as Search-R1 configures it: `http://127.0.0.1:8000/retrieve`.
        timeout: seconds to wait for each answer.
        token: bearer token for a server started with `--token` (default: `$TRL_SEARCH_TOKEN`).

    Example:
        >>> retriever = RemoteRetriever("http://127.0.0.1:8000/retrieve")  # doctest: +SKIP
        >>> retriever.search(["who wrote hamlet"], k=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_batch_size: int = 512,
        token: str | None = None,
    ):
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(
                f"RemoteRetriever needs an http(s):// URL such as http://127.0.0.1:8000/retrieve; got {url!r}."
            )
        if max_batch_size < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("max_batch_size >= 1, max_retries >= 0, timeout > 0 and backoff >= 0 are required.")
        self.url = str(url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_batch_size = max_batch_size
        self.token = token if token is not None else os.environ.get("TRL_SEARCH_TOKEN")
        self._session = None

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
        last_error = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.session.post(self.url, json=payload, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as error:
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code >= 400:
                raise RetrieverRequestError(
                    f"The retrieval server at {self.url} rejected the request (HTTP {response.status_code}): "
                    f"{response.text[:500]}"
                )
            return self._parse(response, len(queries), k)
        raise RetrieverUnavailableError(
            f"The retrieval server at {self.url} is unavailable after {self.max_retries + 1} attempts "
            f"(last error: {last_error}). Start it with `trl-search serve --retriever INDEX`, or check the URL."
        )

    def _parse(self, response, n_queries: int, k: int) -> list[list[Passage]]:
        try:
            result = response.json()["result"]
        except (ValueError, KeyError, TypeError) as error:
            raise RetrieverRequestError(
                f"{self.url} did not answer with the /retrieve contract ({{'result': [...]}}): {response.text[:300]}"
            ) from error
        if not isinstance(result, list) or len(result) != n_queries:
            raise RetrieverRequestError(f"{self.url} answered {len(result)} result lists for {n_queries} queries.")
        passages = []
        for hits in result:
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
