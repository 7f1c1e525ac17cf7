"""Datasets named by path or URI: an ImageFolder directory or Parquet shards, only under the allowed roots.

Every folder and file that is opened is resolved first (symlinks followed, ``os.path.realpath``) and refused
with 403 if it lands outside the allowed roots: a link inside a root cannot lead out of it.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from pudnet.data import shards
from pudnet.data.tasks import ClassBank
from pudnet.data.sources import to_rgb_array

from .budget import BadInput, Budget, decode_budgeted, inside


class DatasetPath(BaseModel):
    """A dataset the cluster can read: an ImageFolder directory, or a Parquet shard directory (path or URI)
    with its manifest (``pudnet.data.shards``)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="absolute path or URI under one of the server's allowed roots")
    classes: list[str] | None = Field(None, description="Parquet shards only: the classes to read")
    split: str | None = Field(None, description="Parquet shards only: the split to read")


def load_path(request: DatasetPath, image_size: int, max_images: int, allowed_roots: list[str],
              budget: Budget) -> ClassBank:
    """An ImageFolder directory or Parquet shards under an allowed root, resized to ``image_size``."""
    location = _allowed(request.path, allowed_roots)
    if "://" not in location and not os.path.isdir(location):
        raise BadInput(404, "path_not_found", f"{request.path!r} is not a directory on the server")
    if "://" in location or os.path.isfile(os.path.join(location, shards.MANIFEST)):
        return _read_shards(location, request, image_size, max_images, allowed_roots, budget)
    if request.classes is not None or request.split is not None:
        raise BadInput(400, "invalid_request", "classes and split apply to Parquet shards, not image folders")
    files = walk(location, request.path, allowed_roots, limit=max_images)
    entries = [(rel.split("/", 1)[0], rel, real) for rel, real in files if "/" in rel]  # root files: unlabelled
    classes = {e.name for e in os.scandir(location) if not e.name.startswith(".") and os.path.isdir(e.path)}
    empty = sorted(classes - {class_name for class_name, _, _ in entries})
    if empty:
        raise BadInput(400, "empty_class", f"class folder(s) without files in {request.path!r}: {empty[:10]}")
    if not entries:
        raise BadInput(400, "invalid_dataset", f"{request.path!r} has no class folders; expected "
                                               "root/<class_name>/<image>")
    return decode_budgeted(entries, image_size, budget)


def walk(top: str, shown: str, roots: list[str], limit: int | None) -> list[tuple[str, str]]:
    """``(relative name, resolved path)`` of the visible files below the resolved folder ``top``, links
    followed; 403 naming the first entry that resolves outside ``roots``, 413 past ``limit`` files."""
    files, seen, stack = [], {top}, [(top, "")]
    while stack:
        folder, rel = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name, reverse=True):
            name = f"{rel}{entry.name}"
            if entry.name.startswith("."):
                continue
            real = os.path.realpath(entry.path)
            if not inside(real, roots):
                raise BadInput(403, "path_not_allowed", f"{shown}/{name} is a link that leads outside this "
                                                        "server's allowed roots")
            if os.path.isdir(real):
                if real not in seen:  # a link back up the tree is read once, not for ever
                    seen.add(real)
                    stack.append((real, f"{name}/"))
            elif os.path.isfile(real):
                files.append((name, real))
                if limit is not None and len(files) > limit:
                    raise BadInput(413, "too_many_images", f"{shown!r} holds more than {limit} files: this server "
                                                           f"accepts at most {limit} images")
    return sorted(files)


def _allowed(path: str, roots: list[str]) -> str:
    """``path`` if it lies under one of ``roots`` (URIs by prefix, local paths after resolving links and ..)."""
    if not roots:
        raise BadInput(403, "path_not_allowed", "this server reads no dataset paths (allowed_roots is empty); "
                                                "upload the dataset instead")
    if "://" in path:
        within = ".." not in path.split("/") and any(
            path.startswith(root.rstrip("/") + "/") for root in roots if "://" in root)
        resolved = path
    else:
        if not os.path.isabs(path):
            raise BadInput(400, "invalid_request", f"path {path!r} must be absolute")
        resolved = os.path.realpath(path)
        within = inside(resolved, [r for r in roots if "://" not in r])
    if not within:
        raise BadInput(403, "path_not_allowed", f"{path!r} is outside this server's allowed roots {roots}")
    return resolved


def _read_shards(location: str, request: DatasetPath, image_size: int, max_images: int, roots: list[str],
                 budget: Budget) -> ClassBank:
    """The shards' images, counted from the manifest first: a request for too many is refused unread."""
    try:
        catalog = shards.Catalog(location)
        if "://" not in location:  # the manifest names the files: each must resolve inside the roots too
            opened = [os.path.join(location, shards.MANIFEST)] + [p for f in catalog.files.values() for p, _ in f]
            outside = [p for p in opened if not inside(os.path.realpath(p), roots)]
            if outside:
                raise BadInput(403, "path_not_allowed", f"{len(outside)} file(s) of the shards at {request.path!r} "
                                                        "resolve outside this server's allowed roots")
        names = catalog.class_names if request.classes is None else request.classes
        catalog.check(names)
        count = sum(catalog.count(name, split) for name in names
                    for split in ([request.split] if request.split else shards.SPLITS))
        if count > max_images:
            raise BadInput(413, "too_many_images", f"{count} images: this server accepts at most {max_images}; "
                                                   "select fewer classes")
        side = catalog.image_size
        budget.check_pixels("each shard image", side, side, count * side * side,
                            f"{count * side * side} by the manifest ({count} images of {side}x{side})")
        bank = shards.read_class_bank(location, classes=request.classes, split=request.split)
    except (ValueError, KeyError, OSError) as e:
        raise BadInput(400, "invalid_dataset", f"cannot read shards at {request.path!r}: {e}") from e
    if bank.image_size != image_size:
        resized = np.empty((len(bank.images), image_size, image_size, 3), np.uint8)
        for row, x in enumerate(bank.images):
            budget.check()
            resized[row] = to_rgb_array(Image.fromarray(x), image_size)
        bank = ClassBank(resized, bank.labels, bank.class_names)
    return bank
