"""An ``.npz`` upload read header first: shapes, dtypes and byte counts are checked before any array is
allocated, so a 10 KB file that declares a 6 TB array is refused, not attempted."""
from __future__ import annotations

import math
import zipfile
import zlib

import numpy as np
from PIL import Image

from pudnet.data.tasks import ClassBank
from pudnet.data.sources import to_rgb_array

from .budget import BadInput, Budget

NPY_ARRAYS = ("images", "labels", "class_names")
_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


def _npy_header(archive: zipfile.ZipFile, name: str, max_bytes: int) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an npy member's header, checked against the bytes it holds: nothing is allocated."""
    info = archive.getinfo(f"{name}.npy")
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"npy format version {version} (1.0 or 2.0 expected)")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            header = f.tell()
    except (*_ERRORS, ValueError) as e:
        raise BadInput(400, "invalid_npz", f"{name}: unreadable npy header ({e}); save with numpy.savez") from e
    if dtype.hasobject:
        raise BadInput(400, "invalid_npz", f"{name} is an object array; save plain numeric/string arrays")
    declared = math.prod(shape) * dtype.itemsize
    if declared > max_bytes or declared != info.file_size - header:
        raise BadInput(400, "invalid_npz", f"{name}: header declares shape {shape} {dtype} ({declared} bytes) but "
                                           f"the member holds {info.file_size - header} bytes of data")
    return shape, dtype


def check_image_layout(shape: tuple[int, ...], max_images: int, budget: Budget) -> None:
    """``images`` must be (N, H, W) or channels-last (N, H, W, 1|3|4), within the image and pixel budgets."""
    channels_first = len(shape) == 4 and shape[1] in (1, 3, 4)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)) or 0 in shape or channels_first:
        hint = "; it looks channels-first: save images.transpose(0, 2, 3, 1)" if channels_first else ""
        raise BadInput(400, "invalid_npz", f"images shape {shape}: expected (N, H, W) or (N, H, W, 1|3|4), "
                                           f"channels last{hint}")
    if shape[0] > max_images:
        raise BadInput(413, "too_many_images", f"{shape[0]} images: this server accepts at most {max_images}")
    budget.check_pixels("each npz image", shape[2], shape[1], shape[0] * shape[1] * shape[2],
                        f"{shape[0] * shape[1] * shape[2]} by the npy header's shape {shape}")


def read_npz(archive: zipfile.ZipFile, image_size: int, max_images: int, budget: Budget) -> ClassBank:
    """``images`` (N, H, W[, C]) uint8, ``labels`` (N,) ints, optional ``class_names`` (K,) unique strings."""
    present = [name for name in NPY_ARRAYS if f"{name}.npy" in archive.namelist()]
    limit = 8 * budget.max_total_pixels  # no array may declare more than this; the member sizes decide the rest
    check_image_layout(_npy_header(archive, "images", limit)[0], max_images, budget)
    arrays = {}
    for name in present:
        _npy_header(archive, name, limit)
        try:
            with archive.open(f"{name}.npy") as f:
                arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
        except (*_ERRORS, ValueError) as e:
            raise BadInput(400, "invalid_npz", f"unreadable npz array {name} (save it with numpy.savez): {e}") from e
    images, labels = arrays["images"], arrays["labels"]
    _check_dtype("images", images, np.uint8, "uint8 pixels 0..255")
    _check_dtype("labels", labels, np.integer, "integer class indices")
    if labels.shape != (len(images),):
        raise BadInput(400, "count_mismatch", f"{len(images)} images but labels of shape {labels.shape}; "
                                              "expected one label per image")
    if "class_names" in arrays:
        names = tuple(str(n) for n in arrays["class_names"].reshape(-1))
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise BadInput(400, "duplicate_class_names", f"class_names repeat {duplicates[:10]}: each head row "
                                                         "needs one unique name")
        if labels.min() < 0 or labels.max() >= len(names):
            raise BadInput(400, "invalid_npz", f"labels must lie in [0, {len(names)}) for {len(names)} class_names")
    else:
        values, labels = np.unique(labels, return_inverse=True)
        names = tuple(str(v) for v in values)
    if images.shape[1:] == (image_size, image_size, 3):  # already what to_rgb_array returns (its resize and
        return ClassBank(np.ascontiguousarray(images), labels.astype(np.int64), names)  # crop are identities)
    pixels = images[..., 0] if images.ndim == 4 and images.shape[3] == 1 else images
    resized = np.empty((len(pixels), image_size, image_size, 3), np.uint8)
    for row, p in enumerate(pixels):
        budget.check()
        resized[row] = to_rgb_array(Image.fromarray(p), image_size)
    return ClassBank(resized, labels.astype(np.int64), names)


def _check_dtype(name: str, array: np.ndarray, kind: type, expected: str) -> None:
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        raise BadInput(400, "non_finite", f"{name} contain NaN or inf; expected {expected}")
    if not np.issubdtype(array.dtype, kind) or array.dtype == np.bool_:
        raise BadInput(400, "wrong_dtype", f"{name} have dtype {array.dtype}; expected {expected}")
