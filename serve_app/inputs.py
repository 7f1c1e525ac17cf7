"""Turn an upload (zip/tar ImageFolder archive, ``.npz``) into a ClassBank, or raise BadInput.

Every pixel goes through ``pudnet.data.sources.to_rgb_array``, so served images match meta-training exactly.
Limits are checked before the expensive step they guard: the declared size before a body is read, member
names and sizes before an archive is inflated, npy headers before an array is allocated, image headers
(pixels) before any image is decoded (``serve_app.budget``).
"""
from __future__ import annotations

import io
import lzma
import tarfile
import zipfile
import zlib
from pathlib import PurePosixPath

from starlette.requests import ClientDisconnect, Request

from pudnet.data.images import class_of, hidden
from pudnet.data.tasks import ClassBank

from .budget import BadInput, Budget, decode_budgeted
from .npz import NPY_ARRAYS, read_npz

_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError, OSError)
FORMATS_HINT = "a zip or tar archive of <class_name>/<image> files, an .npz with images and labels, or JSON {\"path\"}"


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


def read_upload(body: bytes, image_size: int, max_images: int, max_extracted_bytes: int, budget: Budget) -> ClassBank:
    """Sniff the upload's format from its bytes (clients mislabel Content-Type) and decode it."""
    if not body:
        raise BadInput(400, "empty_upload", f"the request body is empty; send {FORMATS_HINT}")
    if body[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            archive = zipfile.ZipFile(io.BytesIO(body))
        except UnicodeDecodeError as e:  # a name not valid UTF-8 although its UTF-8 flag (bit 11) is set
            raise BadInput(400, "bad_member_name", f"a zip member name is not valid UTF-8 although the entry is "
                                                   f"flagged UTF-8 ({e}); rename the files or re-create the zip") from e
        except _ARCHIVE_ERRORS as e:
            raise BadInput(400, "unreadable_archive", f"unreadable zip file: {e}") from e
        files = [i for i in archive.infolist() if not i.is_dir()]
        _check_extracted(sum(i.file_size for i in files), max_extracted_bytes)
        if {f"{name}.npy" for name in NPY_ARRAYS[:2]} <= {i.filename for i in files}:
            return read_npz(archive, image_size, max_images, budget)
        members = [(i.filename, lambda i=i: _zip_read(archive, i)) for i in files]
        return _decode_archive(members, image_size, max_images, budget)
    try:
        archive = tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    except _ARCHIVE_ERRORS as e:
        raise BadInput(415, "unsupported_format", f"not a zip, npz or tar archive; send {FORMATS_HINT}") from e
    return _decode_archive(_tar_members(archive, max_extracted_bytes), image_size, max_images, budget)


def _check_extracted(size: int, limit: int) -> None:
    if size > limit:
        raise BadInput(413, "archive_too_large", f"archive inflates to more than {limit} bytes "
                                                 f"(this server's limit); send fewer or smaller images")


def _zip_read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.flag_bits & 0x1:
        raise BadInput(400, "unreadable_archive", f"{info.filename}: encrypted zip entries are not supported")
    if info.compress_type not in _ZIP_METHODS:
        raise BadInput(400, "unreadable_archive", f"{info.filename}: unsupported zip compression {info.compress_type}")
    try:
        return archive.read(info)
    except _ARCHIVE_ERRORS as e:
        raise BadInput(400, "unreadable_archive", f"unreadable archive member {info.filename!r}: {e}") from e


def _tar_members(archive: tarfile.TarFile, max_extracted_bytes: int) -> list:
    """Regular files of a tar, sizes checked header by header so a compressed bomb is never inflated, and
    read in order (seeking back in a .tar.gz would inflate it again for every member). Links and devices
    are refused: an ImageFolder upload holds files."""
    members, total = [], 0
    try:
        for member in archive:
            if member.isfile():
                total += member.size
                _check_extracted(total, max_extracted_bytes)
                data = archive.extractfile(member).read()
                members.append((member.name, lambda data=data: data))
            elif not member.isdir():
                raise BadInput(400, "unsupported_member", f"{member.name!r} is a link or special file; an upload "
                                                          "holds only folders and image files")
    except _ARCHIVE_ERRORS as e:
        raise BadInput(400, "unreadable_archive", f"unreadable tar archive: {e}") from e
    return members


def member_parts(name: str) -> tuple[str, ...]:
    """The path parts of an archive member name; 400 for names that would climb out of the folder."""
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts or (parts and parts[0].endswith(":")):
        raise BadInput(400, "unsafe_member_name", f"archive member {name!r} has an absolute or '..' path; "
                                                  "members must be relative: <class_name>/<image>")
    return parts


def _decode_archive(members: list, image_size: int, max_images: int, budget: Budget) -> ClassBank:
    """``(name, read)`` archive members laid out ``[root/]<class_name>/<image>`` -> bank named by class folder."""
    paths, seen = [], set()
    for name, read in members:
        parts = member_parts(name)
        if parts in seen:
            raise BadInput(400, "duplicate_member", f"archive member {name!r} appears more than once")
        seen.add(parts)
        if parts and not hidden(parts):
            paths.append((parts, read))
    if paths and len({parts[0] for parts, _ in paths}) == 1 and min(len(parts) for parts, _ in paths) >= 3:
        paths = [(parts[1:], read) for parts, read in paths]  # a zip of the folder itself: drop its root
    images = [(parts, read) for parts, read in paths if class_of(parts)]  # files at the root are not labelled
    if not images:
        raise BadInput(400, "empty_archive", "the archive holds no <class_name>/<image> files")
    if len(images) > max_images:
        raise BadInput(413, "too_many_images", f"{len(images)} images: this server accepts at most {max_images}")
    entries = []
    for parts, read in images:
        budget.check()
        entries.append((parts[0], "/".join(parts), read()))
    return decode_budgeted(entries, image_size, budget)
