"""Datasets named by path or URI: an ImageFolder directory or Parquet shards, only under the allowed roots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from pudnet import shards
from pudnet.data import ClassBank
from pudnet.datasets import load_image_folder, to_rgb_array

from .inputs import BadInput, strict


class DatasetPath(BaseModel):
    """A dataset the cluster can read: an ImageFolder directory, or a Parquet shard directory (path or URI)
    with its manifest (``pudnet.shards``)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="absolute path or URI under one of the server's allowed roots")
    classes: list[str] | None = Field(None, description="Parquet shards only: the classes to read")
    split: str | None = Field(None, description="Parquet shards only: the split to read")


def load_path(request: DatasetPath, image_size: int, max_images: int, allowed_roots: list[str]) -> ClassBank:
    """An ImageFolder directory or Parquet shards under an allowed root, resized to ``image_size``."""
    location = _allowed(request.path, allowed_roots)
    local = None if "://" in location else Path(location)
    if local is not None and not local.is_dir():
        raise BadInput(404, "path_not_found", f"{request.path!r} is not a directory on the server")
    if local is None or (local / shards.MANIFEST).is_file():
        return _read_shards(location, request, image_size, max_images)
    if request.classes is not None or request.split is not None:
        raise BadInput(400, "invalid_request", "classes and split apply to Parquet shards, not image folders")
    count = sum(1 for p in local.rglob("*") if p.is_file())
    if count > max_images:
        raise BadInput(413, "too_many_images", f"{request.path!r} holds {count} files: this server accepts at "
                                               f"most {max_images} images")
    try:
        bank, skipped = load_image_folder(local, image_size, source="folder")
    except ValueError as e:
        raise BadInput(400, "invalid_dataset", str(e)) from e
    return strict(bank, skipped)


def _allowed(path: str, roots: list[str]) -> str:
    """``path`` if it lies under one of ``roots`` (URIs by prefix, local paths after resolving links and ..)."""
    if not roots:
        raise BadInput(403, "path_not_allowed", "this server reads no dataset paths (allowed_roots is empty); "
                                                "upload the dataset instead")
    if "://" in path:
        inside = ".." not in path.split("/") and any(
            path.startswith(root.rstrip("/") + "/") for root in roots if "://" in root)
        resolved = path
    else:
        if not Path(path).is_absolute():
            raise BadInput(400, "invalid_request", f"path {path!r} must be absolute")
        resolved = str(Path(path).resolve())
        inside = any(Path(resolved).is_relative_to(Path(r).resolve()) for r in roots if "://" not in r)
    if not inside:
        raise BadInput(403, "path_not_allowed", f"{path!r} is outside this server's allowed roots {roots}")
    return resolved


def _read_shards(location: str, request: DatasetPath, image_size: int, max_images: int) -> ClassBank:
    """The shards' images, counted from the manifest first: a request for too many is refused unread."""
    try:
        catalog = shards.Catalog(location)
        names = catalog.class_names if request.classes is None else request.classes
        catalog.check(names)
        count = sum(catalog.count(name, split) for name in names
                    for split in ([request.split] if request.split else shards.SPLITS))
        if count > max_images:
            raise BadInput(413, "too_many_images", f"{count} images: this server accepts at most {max_images}; "
                                                   "select fewer classes")
        bank = shards.read_class_bank(location, classes=request.classes, split=request.split)
    except (ValueError, KeyError, OSError) as e:
        raise BadInput(400, "invalid_dataset", f"cannot read shards at {request.path!r}: {e}") from e
    if bank.image_size != image_size:
        bank = ClassBank(np.stack([to_rgb_array(Image.fromarray(x), image_size) for x in bank.images]),
                         bank.labels, bank.class_names)
    return bank
