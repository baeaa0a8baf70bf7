"""Index directories: atomic writes and a manifest that says what the directory holds and checks it on load."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator


MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class InvalidIndexError(ValueError):
    """Raised when an index directory is incomplete, of the wrong kind or does not match its corpus.

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


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[str]:
    """Yields a staging directory next to `target` and moves it to `target` only when the block succeeds.

    An interrupted or failed write leaves `target` as it was (absent, or the previous index), never half-written.
    An existing `target` is replaced only if it is empty or is itself an index (has a manifest), so a typo in an
    output path cannot delete unrelated files.

    Example:
        >>> import os, tempfile
        >>> out = os.path.join(tempfile.mkdtemp(), "index")
        >>> with atomic_directory(out) as staging:
        ...     open(os.path.join(staging, "data.bin"), "wb").close()
        >>> os.listdir(out)
        ['data.bin']
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise FileExistsError(f"{target} exists and is not a directory: choose another output path.")
        if os.listdir(target) and not os.path.isfile(os.path.join(target, MANIFEST_NAME)):
            raise FileExistsError(
                f"{target} is a non-empty directory that is not a trl-search index; refusing to overwrite it. "
                "Choose a new output path or empty it first."
            )
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        yield staging
        if os.path.exists(target):
            # Two renames keep the window without a valid index tiny, and the old copy is removed only afterwards.
            retired = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
            os.rmdir(retired)
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _file_sizes(directory: str) -> dict[str, int]:
    sizes = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory).replace(os.sep, "/")
            if relative != MANIFEST_NAME:
                sizes[relative] = os.path.getsize(path)
    return dict(sorted(sizes.items()))


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
    """Writes `manifest.json` into `directory`, listing every file already there with its size.

    Write it last: the file list it records is what `read_manifest` checks on load.

    Example:
        >>> with atomic_directory("indexes/mine") as staging:  # doctest: +SKIP
        ...     write_manifest(staging, kind="bm25", engine="bm25s", parameters={}, passages=0, corpus_sha256=None)
    """
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "engine": engine,
        "parameters": parameters,
        "passages": int(passages),
        "corpus_sha256": corpus_sha256,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": library_versions(*packages),
        "files": _file_sizes(directory),
        **extra,
    }
    with open(os.path.join(directory, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    return manifest


def read_manifest(directory: str | os.PathLike, kind: str | None = None) -> dict:
    """Reads and checks an index's manifest: that it exists, has the expected `kind` and that its files are whole.

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
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except json.JSONDecodeError as error:
        raise InvalidIndexError(f"{path} is not valid JSON ({error}); rebuild the index.") from error
    if kind is not None and manifest.get("kind") != kind:
        raise InvalidIndexError(
            f"{directory!r} holds a {manifest.get('kind')!r} index, not a {kind!r} one: open it with "
            "`trl_search.retrievers.load_retriever(path)`, which picks the right class."
        )
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InvalidIndexError(
            f"{directory!r} was written by a newer trl-search (format {manifest['format_version']}); upgrade trl-search."
        )
    for name, size in manifest.get("files", {}).items():
        file_path = os.path.join(directory, name)
        if not os.path.isfile(file_path):
            raise InvalidIndexError(f"{directory!r} is missing {name!r}, listed in its manifest; rebuild the index.")
        if os.path.getsize(file_path) != size:
            raise InvalidIndexError(
                f"{file_path} has {os.path.getsize(file_path)} bytes but the manifest says {size}: the file was "
                "changed or truncated after the build; rebuild the index."
            )
    return manifest
