"""Index directories: atomic writes and a manifest that says what the directory holds and checks it on load."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np


logger = logging.getLogger(__name__)


MANIFEST_NAME = "manifest.json"
# 2: passages stored as verbatim `{"id", "contents"}` rows, and a SHA-256 per file. 1: `{"id", "title", "text"}` rows.
FORMAT_VERSION = 2
# Field -> accepted types of a manifest; `checksums` is required from format 2 on.
MANIFEST_FIELDS = {
    "format_version": (int,),
    "kind": (str,),
    "engine": (str,),
    "parameters": (dict,),
    "passages": (int,),
    "corpus_sha256": (str, type(None)),
    "files": (dict,),
}


class InvalidIndexError(ValueError):
    """Raised when an index directory is incomplete, damaged, of the wrong kind or does not match its corpus. The
    message names the file at fault and how to fix it (usually: rebuild with `trl-search index`).

    Example:
        >>> read_manifest("indexes/wiki-e5", kind="bm25")  # doctest: +SKIP
        InvalidIndexError: 'indexes/wiki-e5' holds a 'dense' index, not a 'bm25' one: ...
    """


def library_versions(*packages: str) -> dict[str, str]:
    """Installed versions of `packages` (and Python), recorded in manifests so an index can be reproduced.

    Example:
        >>> "python" in library_versions("numpy")
        True
    """
    versions = {"python": sys.version.split()[0]}
    for package in ("trl-search", *packages):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def rebuild_hint(directory: str) -> str:
    return f"rebuild it with `trl-search index --corpus CORPUS --out {directory}`"


# Temporary folders next to an index `out` are named `.{basename}.{role}-{pid}-{random}`: `tmp` (the staging copy
# renamed to `out` at the end), `build` (the work folder of a build), `old` (the previous index, while replaced).
_TEMP_ROLES = ("tmp", "build", "old")


def _temp_prefix(target: str, role: str) -> str:
    return f".{os.path.basename(target)}.{role}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[str]:
    """Removes the temporary folders that a killed build of `target` left next to it (those of live processes are
    kept). A previous index that a kill left renamed aside (`.{name}.old-*`) is put back when `target` is missing.
    Returns the paths removed or restored.

    Example:
        >>> remove_stale_temporaries("indexes/wiki-bm25")  # doctest: +SKIP
        ['indexes/.wiki-bm25.tmp-4242-x1y2z3']
    """
    target = os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    pattern = re.compile(rf"^\.{re.escape(name)}\.({'|'.join(_TEMP_ROLES)})-(\d+)-")
    cleaned = []
    try:
        entries = sorted(os.listdir(parent))
    except FileNotFoundError:
        return cleaned
    for entry in entries:
        match = pattern.match(entry)
        if match is None or _pid_alive(int(match.group(2))):
            continue
        path = os.path.join(parent, entry)
        if (
            match.group(1) == "old"
            and not os.path.exists(target)
            and os.path.isfile(os.path.join(path, MANIFEST_NAME))
        ):
            os.replace(path, target)  # killed between the two renames of a replacement: the old index comes back
        else:
            shutil.rmtree(path, ignore_errors=True)
        cleaned.append(path)
    return cleaned


def work_directory(target: str | os.PathLike) -> str:
    """Creates a work folder for building `target`, next to it: on the same filesystem, so the finished files are
    hard-linked into the index (no copy), and named so that a later build removes it if this process is killed.

    Example:
        >>> work = work_directory("indexes/wiki-bm25")  # doctest: +SKIP
    """
    target = os.path.abspath(os.fspath(target))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    remove_stale_temporaries(target)
    return tempfile.mkdtemp(prefix=_temp_prefix(target, "build"), dir=os.path.dirname(target))


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[str]:
    """Yields a staging directory next to `target` and moves it to `target` only when the block succeeds.

    An interrupted or failed write leaves `target` as it was (absent, or the previous index), never half-written;
    the staging directory is removed on any exception (SIGTERM included where the command turns it into one), and a
    staging directory left by SIGKILL is removed by the next write to the same `target`. An existing `target` is
    replaced only if it is empty or is itself an index (has a manifest), so a typo in an output path cannot delete
    unrelated files.

    Example:
        >>> import os, tempfile
        >>> out = os.path.join(tempfile.mkdtemp(), "index")
        >>> with atomic_directory(out) as staging:
        ...     open(os.path.join(staging, "data.bin"), "wb").close()
        >>> os.listdir(out)
        ['data.bin']
    """
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(target)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise FileExistsError(f"{target} exists and is not a directory: choose another output path.")
        if os.listdir(target) and not os.path.isfile(os.path.join(target, MANIFEST_NAME)):
            raise FileExistsError(
                f"{target} is a non-empty directory that is not a trl-search index; refusing to overwrite it. "
                "Choose a new output path or empty it first."
            )
    staging = tempfile.mkdtemp(prefix=_temp_prefix(target, "tmp"), dir=parent)
    try:
        yield staging
        if os.path.exists(target):
            # Two renames keep the window without a valid index tiny, and the old copy is removed only afterwards.
            retired = tempfile.mkdtemp(prefix=_temp_prefix(target, "old"), dir=parent)
            os.rmdir(retired)
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _index_files(directory: str) -> list[str]:
    names = []
    for root, _, files in os.walk(directory):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if relative != MANIFEST_NAME:
                names.append(relative)
    return sorted(names)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks.

    Example:
        >>> file_sha256("indexes/wiki-bm25/passages.jsonl")  # doctest: +SKIP
        '9f86d0...'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(
    directory: str,
    *,
    kind: str,
    engine: str,
    parameters: dict,
    passages: int,
    corpus_sha256: str | None,
    packages: tuple[str, ...] = (),
    **extra,
) -> dict:
    """Writes `manifest.json` into `directory`, listing every file already there with its size and SHA-256.

    Write it last: the sizes are checked on every load, the checksums by `load(..., verify=True)`.

    Example:
        >>> with atomic_directory("indexes/mine") as staging:  # doctest: +SKIP
        ...     write_manifest(staging, kind="bm25", engine="bm25s", parameters={}, passages=0, corpus_sha256=None)
    """
    names = _index_files(directory)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "engine": engine,
        "parameters": parameters,
        "passages": int(passages),
        "corpus_sha256": corpus_sha256,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": library_versions(*packages),
        "files": {name: os.path.getsize(os.path.join(directory, name)) for name in names},
        "checksums": {name: file_sha256(os.path.join(directory, name)) for name in names},
        **extra,
    }
    with open(os.path.join(directory, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    return manifest


def read_json_file(path: str, what: str = "index file") -> object:
    """Parses a JSON file of an index, raising `InvalidIndexError` naming the file when it is damaged.

    Example:
        >>> read_json_file("indexes/wiki-bm25/bm25s/vocab.index.json")  # doctest: +SKIP
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidIndexError(f"{path}: this {what} is damaged (not valid JSON: {error}).") from None


def load_npy(path: str, mmap: bool = False) -> np.ndarray:
    """Loads a `.npy` array of an index, raising `InvalidIndexError` naming the file when its header is damaged.

    Example:
        >>> offsets = load_npy("indexes/wiki-bm25/passages.offsets.npy", mmap=True)  # doctest: +SKIP
    """
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as error:  # numpy's header parser raises several types (ValueError, TokenError, SyntaxError...)
        # numpy's own message for a damaged header talks about pickles, which misleads: say what is wrong.
        raise InvalidIndexError(
            f"{path}: this array file is damaged (its .npy header cannot be read: {type(error).__name__}); rebuild "
            "the index."
        ) from None


def check_array(path: str, array: np.ndarray, dtypes: tuple[str, ...], shape: tuple[int, ...]) -> None:
    """Raises `InvalidIndexError` naming `path` unless `array` has one of `dtypes` and exactly `shape`.

    Example:
        >>> check_array("offsets.npy", np.zeros(3, dtype=np.int64), ("int64",), (3,))
    """
    if array.dtype.name not in dtypes or tuple(array.shape) != tuple(shape):
        raise InvalidIndexError(
            f"{path}: expected a {' or '.join(dtypes)} array of shape {tuple(shape)}, found {array.dtype.name} "
            f"{tuple(array.shape)}: the file is damaged or from another index."
        )


def _check_fields(manifest: object, path: str) -> dict:
    if not isinstance(manifest, dict):
        raise InvalidIndexError(f"{path}: a manifest is a JSON object, found {type(manifest).__name__}.")
    fields = dict(MANIFEST_FIELDS)
    if isinstance(manifest.get("format_version"), int) and manifest["format_version"] >= 2:
        fields["checksums"] = (dict,)
    for name, types in fields.items():
        if name not in manifest:
            raise InvalidIndexError(
                f"{path}: the manifest has no {name!r} field; {rebuild_hint(os.path.dirname(path))}."
            )
        value = manifest[name]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise InvalidIndexError(
                f"{path}: the manifest's {name!r} is {json.dumps(value)[:60]}, not {expected}; "
                f"{rebuild_hint(os.path.dirname(path))}."
            )
    if manifest["passages"] < 0 or not all(
        isinstance(n, str) and isinstance(s, int) and not isinstance(s, bool) and s >= 0
        for n, s in manifest["files"].items()
    ):
        raise InvalidIndexError(f"{path}: the manifest's 'passages' or 'files' entries are damaged.")
    for name, digest in manifest.get("checksums", {}).items():
        if name not in manifest["files"] or not isinstance(digest, str) or len(digest) != 64:
            raise InvalidIndexError(f"{path}: the manifest's checksum of {name!r} is damaged.")
    return manifest


def read_manifest(directory: str | os.PathLike, kind: str | None = None, verify: bool = False) -> dict:
    """Reads and checks an index's manifest: that it exists, is well-formed, has the expected `kind` and that its
    files are all there with their recorded sizes. `verify=True` also re-hashes every file against its SHA-256.

    Example:
        >>> read_manifest("no/such/index")  # doctest: +SKIP
        FileNotFoundError: No index at 'no/such/index' ...
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"No index at {directory!r}: build one with `trl-search index --corpus CORPUS --out {directory}`."
        )
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory!r} has no {MANIFEST_NAME}, so it is not a trl-search index (or its build did not finish). "
            f"Rebuild it with `trl-search index --corpus CORPUS --out {directory}`."
        )
    manifest = _check_fields(read_json_file(path, "manifest"), path)
    if kind is not None and manifest["kind"] != kind:
        raise InvalidIndexError(
            f"{directory!r} holds a {manifest['kind']!r} index, not a {kind!r} one: open it with "
            "`trl_search.retrievers.load_retriever(path)`, which picks the right class."
        )
    if kind is not None and manifest["format_version"] < 2:
        logger.warning(
            "%r was written by an older trl-search that kept passages as title and text: their `contents` are rebuilt "
            "as '\"title\"\\ntext', which may differ from the corpus (and a dense index encoded other text than "
            "Search-R1 does); %s.",
            directory,
            rebuild_hint(directory),
        )
    if manifest["format_version"] > FORMAT_VERSION:
        raise InvalidIndexError(
            f"{directory!r} was written by a newer trl-search (format {manifest['format_version']}); upgrade trl-search."
        )
    for name, size in manifest["files"].items():
        file_path = os.path.join(directory, name)
        if not os.path.isfile(file_path):
            raise InvalidIndexError(f"{directory!r} is missing {name!r}, listed in its manifest; rebuild the index.")
        if os.path.getsize(file_path) != size:
            raise InvalidIndexError(
                f"{file_path} has {os.path.getsize(file_path)} bytes but the manifest says {size}: the file was "
                "changed or truncated after the build; rebuild the index."
            )
    if verify:
        verify_checksums(directory, manifest)
    return manifest


def verify_checksums(directory: str, manifest: dict) -> None:
    """Re-hashes every file of an index against the SHA-256 in its manifest (reads the whole index once).

    Example:
        >>> verify_checksums("indexes/wiki-bm25", read_manifest("indexes/wiki-bm25"))  # doctest: +SKIP
    """
    checksums = manifest.get("checksums")
    if checksums is None:
        raise InvalidIndexError(
            f"{directory!r} was written before indexes recorded per-file checksums, so it cannot be verified; "
            f"{rebuild_hint(directory)}, or load it without verify."
        )
    for name, digest in checksums.items():
        file_path = os.path.join(directory, name)
        if file_sha256(file_path) != digest:
            raise InvalidIndexError(
                f"{file_path} does not match the SHA-256 recorded in the manifest: the file was changed or damaged "
                f"after the build; {rebuild_hint(directory)}."
            )
