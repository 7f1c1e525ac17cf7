"""Load a served PudNet from a local checkpoint or a (Ray Train) checkpoint directory URI.

A Ray Train checkpoint directory holds ``model.safetensors`` next to optimizer state; only that file is
fetched. The model is rebuilt from the config stored in it (``pudnet.checkpoint``), so the Serve YAML
repeats no hyperparameter.
"""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch

from pudnet import checkpoint
from pudnet.model import PudNet


@dataclass(frozen=True)
class ServedModel:
    uri: str             # as configured
    checkpoint_id: str   # content hash of model.safetensors: names exactly which weights answered
    model: PudNet


def load_served(arch: str, uri: str, device: torch.device | None) -> ServedModel:
    """Fetch, hash and load the checkpoint at ``uri``; ValueError if it generates another architecture."""
    with tempfile.TemporaryDirectory(prefix="pudnet-ckpt-") as tmp:
        path = _fetch(uri, Path(tmp))
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        model = checkpoint.load(path, device).model
    if model.cfg.arch != arch:
        raise ValueError(f"checkpoints[{arch!r}] = {uri!r} generates {model.cfg.arch!r} weights; "
                         f"list it under {model.cfg.arch!r}")
    return ServedModel(uri, f"sha256:{digest.hexdigest()[:16]}", model)


def _fetch(uri: str, workdir: Path) -> Path:
    """A local path as is; a URI (s3://, gs://, file://...) via pyarrow, the file or ``<dir>/model.safetensors``."""
    if "://" not in uri:
        path = Path(uri)
        return path / checkpoint.WEIGHTS_FILE if path.is_dir() else path
    filesystem, path = pafs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        path = f"{path.rstrip('/')}/{checkpoint.WEIGHTS_FILE}"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no PudNet checkpoint at {uri!r} (expected a {checkpoint.WEIGHTS_FILE} "
                                "file or a directory holding one)")
    local = workdir / checkpoint.WEIGHTS_FILE
    pafs.copy_files(path, str(local), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
    return local
