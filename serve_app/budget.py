"""A request's work budget: pixels counted from image headers before any image is decoded, a server-time
deadline and a cancel flag checked between images, so no upload can hold a replica longer than configured.

PIL's ``Image.open`` reads only the header (``.size`` is known before ``.load()``), so a 9000x9000 PNG of
10 KB is refused in microseconds instead of costing half a second of decoding per copy.
"""
from __future__ import annotations

import io
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pudnet.data.tasks import ClassBank
from pudnet.data.sources import to_rgb_array

DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)  # what PIL raises on bytes that are no image
ImageSource = bytes | str  # the bytes of an archive member, or a file path (already checked against allowed_roots)


class BadInput(Exception):
    """A refused request: ``status`` (4xx, or 504 past the time ceiling), a stable ``kind`` for metrics,
    and a message naming the fix."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def __reduce__(self):  # it travels from a replica to the gateway as a return value
        return BadInput, (self.status, self.kind, self.message)


@dataclass
class Budget:
    """Limits of one request. ``cancelled`` is set by the HTTP side when the client went away or time ran out."""

    max_image_pixels: int
    max_total_pixels: int
    seconds: float
    deadline: float = 0.0   # time.monotonic() value; 0 means ``seconds`` from now
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.deadline = self.deadline or time.monotonic() + self.seconds

    def check(self) -> None:
        """Raise if the request must stop: called between images, so stopping costs at most one image."""
        if self.cancelled.is_set():
            raise BadInput(499, "cancelled", "the request was cancelled (client disconnected or timed out)")
        if time.monotonic() > self.deadline:
            raise BadInput(504, "server_time_exceeded", f"the request used up this server's limit of {self.seconds:g} "
                                                        "s per request (max_request_seconds); send fewer or smaller "
                                                        "images")

    def check_pixels(self, name: str, width: int, height: int, total: int, counted: str = "") -> None:
        """413 if one image, or the running ``total`` including it, is over budget."""
        if width * height > self.max_image_pixels:
            raise BadInput(413, "image_too_large", f"{name} is {width}x{height} = {width * height} pixels: this "
                                                   f"server decodes at most {self.max_image_pixels} pixels per image "
                                                   "(max_image_pixels); downscale it")
        if total > self.max_total_pixels:
            counted = counted or f"counted from the image headers up to {name}"
            raise BadInput(413, "pixel_budget_exceeded", f"the images hold more than {self.max_total_pixels} pixels "
                                                         "in all, this server's budget per request "
                                                         f"(max_total_pixels), {counted}; send fewer or smaller images")


def _open(source: ImageSource) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def image_size(name: str, source: ImageSource, budget: Budget) -> tuple[int, int] | None:
    """(width, height) from the header alone; None if it is no image; 413 over PIL's own bomb limit."""
    try:
        with _open(source) as image:
            return image.size
    except Image.DecompressionBombError as e:
        raise BadInput(413, "image_too_large", f"{name}: {e}; this server decodes at most "
                                               f"{budget.max_image_pixels} pixels per image (max_image_pixels)") from e
    except DECODE_ERRORS:
        return None


def decode_budgeted(entries: list[tuple[str, str, ImageSource]], size: int, budget: Budget) -> ClassBank:
    """``(class_name, name, source)`` -> bank with sorted class names, each image (size, size, 3) uint8.

    Pass 1 reads every header and refuses the request, unread, if any image is unreadable or the pixels
    exceed the budget; pass 2 decodes, checking the deadline and cancel flag before each image."""
    total, unreadable = 0, []
    for class_name, name, source in entries:
        budget.check()
        dims = image_size(name, source, budget)
        if dims is None:
            unreadable.append(name)
            continue
        total += dims[0] * dims[1]
        budget.check_pixels(name, *dims, total)
    if unreadable:
        raise BadInput(400, "unreadable_images", f"{len(unreadable)} unreadable image file(s) (JPEG/PNG expected): "
                                                 f"{unreadable[:10]}")
    names = sorted({class_name for class_name, _, _ in entries})
    index = {n: i for i, n in enumerate(names)}
    images = np.empty((len(entries), size, size, 3), np.uint8)  # (N, R, R, 3)
    for row, (_, name, source) in enumerate(entries):
        budget.check()
        try:
            with _open(source) as image:
                images[row] = to_rgb_array(image, size)
        except DECODE_ERRORS as e:  # a header that lied about the data behind it
            raise BadInput(400, "unreadable_images", f"{name}: unreadable image data ({e})") from e
    labels = np.array([index[class_name] for class_name, _, _ in entries], np.int64)
    return ClassBank(images, labels, tuple(names))


def inside(real: str, roots: list[str]) -> bool:
    """Is the resolved local path ``real`` one of ``roots`` (resolved too) or below one?"""
    return any(os.path.commonpath([real, root]) == root for root in map(os.path.realpath, roots))
