"""Paths and URIs, and atomic writes: the one place for both.

A location is a local path or a URI pyarrow opens (``s3://``, ``gs://``, ``file://``). Torch-free, and pyarrow
loads on first use, so ``pudnet.client`` stays light.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def filesystem(path_or_uri: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI such as ``s3://bucket/shards``."""
    import pyarrow.fs as pafs
    return pafs.FileSystem.from_uri(path_or_uri) if "://" in path_or_uri else (
        pafs.LocalFileSystem(), os.path.abspath(path_or_uri))


def absolute(path_or_uri: str) -> str:
    """A URI as is, a local path made absolute: Ray workers do not share the driver's working directory."""
    return path_or_uri if "://" in path_or_uri else os.path.abspath(path_or_uri)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def scheme(root: str) -> str:
    """``s3://`` of ``s3://bucket/x`` ("" for a local path): pyarrow lists paths without it."""
    return root[:root.index("://") + 3] if "://" in root else ""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; moved onto ``path`` (``os.replace``) when the block ends
    without an error, removed otherwise, so no crash leaves a half file under the final name. ``mode``: the
    file's permissions (mkstemp makes it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # only after a failure: os.replace moved it
            os.unlink(tmp)
