"""Passage storage on disk: one JSONL file plus row offsets, read lazily through mmap so 21M passages cost no RAM."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from array import array
from collections.abc import Sequence

import numpy as np

from .base import Passage, passage_from_record


PASSAGES_NAME = "passages.jsonl"
OFFSETS_NAME = "passages.offsets.npy"


def link_or_copy(source: str, destination: str) -> None:
    """Hard-links `source` (instant, no extra disk for immutable index files), copying across filesystems.

    Example:
        >>> link_or_copy("staging/passages.jsonl", "index/passages.jsonl")  # doctest: +SKIP
    """
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def link_or_copy_tree(source: str, destination: str) -> None:
    """`link_or_copy` for every file under `source`.

    Example:
        >>> link_or_copy_tree("workdir/tantivy", "staging/tantivy")  # doctest: +SKIP
    """
    for root, _, names in os.walk(source):
        target_root = os.path.join(destination, os.path.relpath(root, source))
        os.makedirs(target_root, exist_ok=True)
        for name in names:
            link_or_copy(os.path.join(root, name), os.path.join(target_root, name))


class PassageStoreWriter:
    """Appends passages to `directory/passages.jsonl` as `{"id", "contents"}` rows (`contents` verbatim), recording
    row offsets and a SHA-256 of the rows.

    Example:
        >>> import tempfile
        >>> writer = PassageStoreWriter(tempfile.mkdtemp())
        >>> writer.add(Passage("0", "Paris", "Paris is in France."))
        >>> count, checksum = writer.close()
        >>> count
        1
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._handle = open(os.path.join(directory, PASSAGES_NAME), "wb")
        self._offsets = array("q", [0])
        self._sha = hashlib.sha256()

    def add(self, passage: Passage) -> None:
        self.add_entry(passage.id, passage.contents)

    def add_entry(self, passage_id: str, contents: str, raw: bytes | None = None) -> None:
        """Adds one row; `raw` is the corpus line when it is already a canonical `{"id", "contents"}` row (kept as is,
        which saves re-encoding it)."""
        line = raw or (json.dumps({"id": passage_id, "contents": contents}, ensure_ascii=False) + "\n").encode()
        self._handle.write(line)
        self._sha.update(line)
        self._offsets.append(self._offsets[-1] + len(line))

    def close(self) -> tuple[int, str]:
        """Finishes the store; returns (number of passages, hex SHA-256 of the canonical rows)."""
        self._handle.close()
        np.save(os.path.join(self.directory, OFFSETS_NAME), np.frombuffer(self._offsets, dtype=np.int64))
        return len(self._offsets) - 1, self._sha.hexdigest()


def _line_offsets(path: str, chunk_bytes: int = 1 << 26) -> np.ndarray:
    """(start, end) byte spans of the non-blank lines of a file, found without decoding it."""
    starts = [np.zeros(1, dtype=np.int64)]
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        position = 0
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10).astype(np.int64)
            starts.append(newlines + position + 1)
            position += len(chunk)
    offsets = np.concatenate(starts)
    if offsets[-1] != size:
        offsets = np.append(offsets, size)
    spans = np.stack([offsets[:-1], offsets[1:]], axis=1)
    # Skip blank lines as `iter_corpus` does; a JSON row is never shorter than 8 bytes, so only short ones are read.
    keep = np.ones(len(spans), dtype=bool)
    with open(path, "rb") as handle:
        for row in np.flatnonzero(np.diff(offsets) < 8):
            handle.seek(spans[row, 0])
            keep[row] = bool(handle.read(int(spans[row, 1] - spans[row, 0])).strip())
    return spans[keep]


class PassageStore(Sequence):
    """Read-only, memory-mapped passages: `store[i]` parses row i on demand.

    Opens either a store written by `PassageStoreWriter` or any JSONL corpus (Search-R1's `{"id", "contents"}`
    rows, or `{"id", "title", "text"}`), whose row offsets are then found with one fast scan.

    Example:
        >>> store = PassageStore.open_jsonl("wiki-18.jsonl")  # doctest: +SKIP
        >>> store[0].title  # doctest: +SKIP
        'Aaron'
    """

    def __init__(self, path: str, spans: np.ndarray):
        self.path = path
        self._spans = spans
        self._handle = open(path, "rb")
        size = os.path.getsize(path)
        self._data = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    @classmethod
    def open(cls, directory: str, passages: int | None = None) -> PassageStore:
        """Opens a store written by `PassageStoreWriter` in `directory`, checking its row offsets against the passage
        file (and against `passages`, the count the manifest records) so damage is an `InvalidIndexError` naming the
        file, not a wrong passage later."""
        from .manifest import InvalidIndexError, check_array, load_npy

        path, offsets_path = os.path.join(directory, PASSAGES_NAME), os.path.join(directory, OFFSETS_NAME)
        offsets = load_npy(offsets_path, mmap=True)
        rows = len(offsets) - 1 if offsets.ndim == 1 and len(offsets) else 0
        check_array(offsets_path, offsets, ("int64",), (rows + 1 if passages is None else passages + 1,))
        if offsets[0] != 0 or offsets[-1] != os.path.getsize(path) or np.any(np.diff(offsets) <= 0):
            raise InvalidIndexError(
                f"{offsets_path}: the row offsets do not fit {path} (damaged, or from another index); rebuild the "
                "index."
            )
        spans = np.lib.stride_tricks.sliding_window_view(offsets, 2)
        return cls(path, spans)

    @classmethod
    def open_jsonl(cls, path: str | os.PathLike) -> PassageStore:
        """Opens any JSONL corpus file in place."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Corpus file not found: {path}. Pass the JSONL corpus the index was built from.")
        return cls(path, _line_offsets(path))

    def __len__(self) -> int:
        return len(self._spans)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start, end = self._spans[index]
        try:
            return passage_from_record(json.loads(self._data[int(start) : int(end)]))
        except ValueError as error:  # bad JSON, bad UTF-8, or a row without id/contents
            from .manifest import InvalidIndexError

            raise InvalidIndexError(
                f"{self.path}: row {index} is damaged ({error}); rebuild the index (or check it with verify=True)."
            ) from None

    def get(self, index: int, score: float) -> Passage:
        """Row `index` as a `Passage` carrying `score`."""
        return self[index].with_score(score)

    def sha256(self) -> str:
        """SHA-256 of the rows, as `PassageStoreWriter.close` computed it (re-reads the whole file)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        return digest.hexdigest()

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()
        self._handle.close()

    def __getstate__(self):
        return {"path": self.path, "spans": np.asarray(self._spans)}

    def __setstate__(self, state):
        self.__init__(state["path"], state["spans"])
