"""Turn an upload (zip/tar ImageFolder archive, ``.npz``) into a ClassBank, or raise BadInput.

Every pixel goes through ``pudnet.datasets`` (``decode_labelled_images``, ``to_rgb_array``), so served images
match meta-training exactly. Limits are checked before the expensive step they guard: the declared size
before a body is read, member sizes before an archive is inflated, file counts before images are decoded.
"""
from __future__ import annotations

import io
import lzma
import tarfile
import zipfile
import zlib
from pathlib import PurePosixPath

import numpy as np
from PIL import Image
from starlette.requests import ClientDisconnect, Request

from pudnet.data import ClassBank
from pudnet.datasets import decode_labelled_images, to_rgb_array

_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError, OSError)
FORMATS_HINT = "a zip or tar archive of <class_name>/<image> files, an .npz with images and labels, or JSON {\"path\"}"


class BadInput(Exception):
    """A client error: ``status`` (4xx), a stable ``kind`` for metrics, and a message naming the fix."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 by its Content-Length or as soon as the stream passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise BadInput(400, "bad_content_length", f"Content-Length {declared!r} is not a byte count")
    if declared is not None and int(declared) > max_bytes:
        raise BadInput(413, "upload_too_large", f"upload of {declared} bytes exceeds this server's limit of "
                                                f"{max_bytes}; send fewer or smaller images")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BadInput(413, "upload_too_large", f"upload exceeds this server's limit of {max_bytes} "
                                                        "bytes; send fewer or smaller images")
            chunks.append(chunk)
    except ClientDisconnect as e:
        raise BadInput(400, "client_disconnected", "the client closed the connection mid-upload") from e
    return b"".join(chunks)


def read_upload(body: bytes, image_size: int, max_images: int, max_extracted_bytes: int) -> ClassBank:
    """Sniff the upload's format from its bytes (clients mislabel Content-Type) and decode it."""
    if not body:
        raise BadInput(400, "empty_upload", f"the request body is empty; send {FORMATS_HINT}")
    if body[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            archive = zipfile.ZipFile(io.BytesIO(body))
        except _ARCHIVE_ERRORS as e:
            raise BadInput(400, "unreadable_archive", f"unreadable zip file: {e}") from e
        sizes = {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}
        _check_extracted(sum(sizes.values()), max_extracted_bytes)
        if {"images.npy", "labels.npy"} <= set(sizes):
            return _read_npz(body, image_size, max_images)
        members = [(i.filename, lambda i=i: _zip_read(archive, i)) for i in archive.infolist() if not i.is_dir()]
        return _decode_archive(members, image_size, max_images)
    try:
        archive = tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    except _ARCHIVE_ERRORS as e:
        raise BadInput(415, "unsupported_format", f"not a zip, npz or tar archive; send {FORMATS_HINT}") from e
    return _decode_archive(_tar_members(archive, max_extracted_bytes), image_size, max_images)


def _check_extracted(size: int, limit: int) -> None:
    if size > limit:
        raise BadInput(413, "archive_too_large", f"archive inflates to more than {limit} bytes "
                                                 f"(this server's limit); send fewer or smaller images")


def _zip_read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.flag_bits & 0x1:
        raise BadInput(400, "unreadable_archive", f"{info.filename}: encrypted zip entries are not supported")
    if info.compress_type not in _ZIP_METHODS:
        raise BadInput(400, "unreadable_archive", f"{info.filename}: unsupported zip compression {info.compress_type}")
    return archive.read(info)


def _tar_members(archive: tarfile.TarFile, max_extracted_bytes: int) -> list:
    """Regular files of a tar, sizes checked header by header so a compressed bomb is never inflated, and
    read in order (seeking back in a .tar.gz would inflate it again for every member)."""
    members, total = [], 0
    try:
        for member in archive:
            if member.isfile():
                total += member.size
                _check_extracted(total, max_extracted_bytes)
                data = archive.extractfile(member).read()
                members.append((member.name, lambda data=data: data))
    except _ARCHIVE_ERRORS as e:
        raise BadInput(400, "unreadable_archive", f"unreadable tar archive: {e}") from e
    return members


def _decode_archive(members: list, image_size: int, max_images: int) -> ClassBank:
    """``(name, read)`` archive members laid out ``[root/]<class_name>/<image>`` -> bank named by class folder."""
    paths = [(PurePosixPath(name).parts, read) for name, read in members]
    paths = [(parts, read) for parts, read in paths
             if parts and not any(p.startswith(".") or p == "__MACOSX" for p in parts)]
    if paths and len({parts[0] for parts, _ in paths}) == 1 and min(len(parts) for parts, _ in paths) >= 3:
        paths = [(parts[1:], read) for parts, read in paths]  # a zip of the folder itself: drop its root
    images = [(parts, read) for parts, read in paths if len(parts) >= 2]  # files at the root are not labelled
    if not images:
        raise BadInput(400, "empty_archive", "the archive holds no <class_name>/<image> files")
    if len(images) > max_images:
        raise BadInput(413, "too_many_images", f"{len(images)} images: this server accepts at most {max_images}")
    entries = ((parts[0], "/".join(parts), read()) for parts, read in images)
    try:
        bank, skipped = decode_labelled_images(entries, image_size, source="upload")
    except _ARCHIVE_ERRORS as e:
        raise BadInput(400, "unreadable_archive", f"unreadable archive member: {e}") from e
    except ValueError as e:
        raise BadInput(400, "unreadable_images", str(e)) from e
    return strict(bank, skipped)


def strict(bank: ClassBank, skipped: list[str]) -> ClassBank:
    """Refuse unreadable images inside class folders (silently dropping them would change the dataset);
    strip the ``"<source>/"`` prefix so class names are the client's folder names."""
    bad = [name for name in skipped if "/" in name]
    if bad:
        raise BadInput(400, "unreadable_images", f"{len(bad)} unreadable image file(s) (JPEG/PNG expected): {bad[:10]}")
    return ClassBank(bank.images, bank.labels, tuple(n.split("/", 1)[1] for n in bank.class_names))


def _read_npz(body: bytes, image_size: int, max_images: int) -> ClassBank:
    """``images`` (N, H, W[, C]) uint8, ``labels`` (N,) ints, optional ``class_names`` (K,) strings."""
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("images", "labels", "class_names") if k in npz.files}
    except (*_ARCHIVE_ERRORS, ValueError) as e:
        raise BadInput(400, "invalid_npz", f"unreadable npz (save it with numpy.savez, no object arrays): {e}") from e
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3, 4)) or 0 in images.shape:
        raise BadInput(400, "invalid_npz", f"images shape {images.shape}: expected (N, H, W) or (N, H, W, 1|3|4)")
    _check_dtype("images", images, np.uint8, "uint8 pixels 0..255")
    _check_dtype("labels", labels, np.integer, "integer class indices")
    if labels.shape != (len(images),):
        raise BadInput(400, "count_mismatch", f"{len(images)} images but labels of shape {labels.shape}; "
                                              "expected one label per image")
    if len(images) > max_images:
        raise BadInput(413, "too_many_images", f"{len(images)} images: this server accepts at most {max_images}")
    if "class_names" in arrays:
        names = tuple(str(n) for n in arrays["class_names"].reshape(-1))
        if labels.min() < 0 or labels.max() >= len(names):
            raise BadInput(400, "invalid_npz", f"labels must lie in [0, {len(names)}) for {len(names)} class_names")
    else:
        values, labels = np.unique(labels, return_inverse=True)
        names = tuple(str(v) for v in values)
    pixels = images[..., 0] if images.ndim == 4 and images.shape[3] == 1 else images
    resized = np.stack([to_rgb_array(Image.fromarray(p), image_size) for p in pixels])
    return ClassBank(resized, labels.astype(np.int64), names)


def _check_dtype(name: str, array: np.ndarray, kind: type, expected: str) -> None:
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        raise BadInput(400, "non_finite", f"{name} contain NaN or inf; expected {expected}")
    if not np.issubdtype(array.dtype, kind) or array.dtype == np.bool_:
        raise BadInput(400, "wrong_dtype", f"{name} have dtype {array.dtype}; expected {expected}")
