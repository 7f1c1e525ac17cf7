"""Load a served PudNet from a local checkpoint, a (Ray Train) checkpoint directory URI, or a run directory.

A Ray Train checkpoint directory holds ``model.safetensors`` next to optimizer state; only that file is
fetched. A run directory (``<storage_path>/<name>``, what ``jobs/train.py`` writes) stands for its newest
``checkpoint_*`` (highest step in its ``state.json``). The model is rebuilt from the config stored in the
checkpoint (``pudnet.model.checkpoint``), so the Serve YAML repeats no hyperparameter.
"""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch
from safetensors import SafetensorError, safe_open

from pudnet.files import filesystem
from pudnet.model import checkpoint
from pudnet.model.config import PudNetConfig
from pudnet.model.hypernetwork import PudNet


@dataclass(frozen=True)
class ServedModel:
    uri: str             # as configured
    checkpoint_id: str   # content hash of model.safetensors: names exactly which weights answered
    model: PudNet


class CheckpointError(ValueError):
    """One line naming the architecture, the path and what is wrong: what a failed deploy shows."""


def newest_checkpoint(path: str | Path) -> Path:
    """``pudnet.model.checkpoint.newest``, failing with the one-line CheckpointError a deploy shows."""
    try:
        return checkpoint.newest(path)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None


def architecture_of(path: str | Path) -> str:
    """The architecture a checkpoint generates, read from its metadata alone (no tensor is loaded)."""
    path = newest_checkpoint(path)
    file = path / checkpoint.WEIGHTS_FILE if path.is_dir() else path
    try:
        with safe_open(str(file), framework="pt") as f:
            return PudNetConfig.from_json((f.metadata() or {})["pudnet_config"]).arch
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{str(file)!r} is not a readable PudNet checkpoint: {type(e).__name__}: {e}") from None


def resolve(uri: str) -> str:
    """A local path made absolute (replicas may run elsewhere) and resolved to its newest checkpoint; URIs as is."""
    return uri if "://" in uri else str(newest_checkpoint(Path(uri).expanduser().absolute()))


def load_served(arch: str, uri: str, device: torch.device | None) -> ServedModel:
    """Fetch, hash and load the checkpoint at ``uri``; CheckpointError (one line) if it is missing, unreadable
    or generates another architecture."""
    try:
        with tempfile.TemporaryDirectory(prefix="pudnet-ckpt-") as tmp:
            path = _fetch(resolve(uri), Path(tmp))
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            model = checkpoint.load(path, device).model
    except CheckpointError as e:
        raise CheckpointError(f"checkpoints[{arch!r}]: {e}") from None
    except Exception as e:  # noqa: BLE001 - any loader failure becomes the one line a deploy shows
        raise CheckpointError(f"checkpoints[{arch!r}] = {uri!r} cannot be loaded: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if model.cfg.arch != arch:
        raise CheckpointError(f"checkpoints[{arch!r}] = {uri!r} generates {model.cfg.arch!r} weights; "
                         f"list it under {model.cfg.arch!r}")
    return ServedModel(uri, f"sha256:{digest.hexdigest()[:16]}", model)


def _fetch(uri: str, workdir: Path) -> Path:
    """A local path as is; a URI (s3://, gs://, file://...) via pyarrow, the file or ``<dir>/model.safetensors``."""
    if "://" not in uri:
        path = newest_checkpoint(uri)
        return path / checkpoint.WEIGHTS_FILE if path.is_dir() else path
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        path = f"{path.rstrip('/')}/{checkpoint.WEIGHTS_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise CheckpointError(f"no PudNet checkpoint at {uri!r} (expected a {checkpoint.WEIGHTS_FILE} "
                                "file or a directory holding one)")
    local = workdir / checkpoint.WEIGHTS_FILE
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local
