"""ImageFolder's one rule, for every reader of a class-per-folder tree: the local loader
(``pudnet.data.sources.load_image_folder``), the sharding job (``jobs/sharding.py``), the client's packer
(``pudnet.client.pack_folder``) and the server's archive reader (``serve_app/inputs.py``). Torch-free.

The pixels themselves are decoded and resized in one place too: ``pudnet.data.sources.decode_labelled_images``.
"""
from __future__ import annotations

from typing import Sequence


def hidden(parts: Sequence[str]) -> bool:
    """Whether a path (its parts below the root) is one no reader looks at: a hidden part (``.DS_Store``,
    ``.git``) or macOS's ``__MACOSX`` resource folder."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def class_of(parts: Sequence[str]) -> str | None:
    """The class of the file at ``parts`` below an ImageFolder root: its top folder; None for a file at the
    root (not labelled) or a hidden one. Any other file is tried as an image, whatever its extension."""
    return parts[0] if len(parts) >= 2 and not hidden(parts) else None
