"""Hypernetwork checkpoints: safetensors weights that carry their own config and class split.

``model.safetensors`` metadata (text only) holds ``pudnet_config`` (PudNetConfig JSON) and
``class_split`` (ClassSplit JSON), so a checkpoint alone rebuilds the model (nanoGPT's
``model_args``, ghn3's ``config``) and tells evaluation which classes were never seen.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import PudNetConfig
from pudnet.data.tasks import ClassSplit
from pudnet.files import atomic_path
from .hypernetwork import PudNet

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.json"   # beside WEIGHTS_FILE in a training run's checkpoint: {"step": ..., "metrics": ...}
FORMAT = "pudnet-checkpoint-1"


@dataclass
class LoadedCheckpoint:
    model: PudNet
    split: ClassSplit | None
    metadata: dict[str, str]


def save(directory: str | os.PathLike, model: PudNet, split: ClassSplit | None = None,
         extra: dict[str, str] | None = None) -> Path:
    """Write ``directory/model.safetensors`` atomically (a crash never leaves a half file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "pudnet_config": model.cfg.to_json(), **(extra or {})}
    if split is not None:
        metadata["class_split"] = split.to_json()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return directory / WEIGHTS_FILE


def newest(path: str | os.PathLike) -> Path:
    """The checkpoint ``path`` names: itself if it is ``model.safetensors`` or a directory holding it, else the
    newest ``checkpoint_*`` (highest step in its state.json) of a run directory ``<storage_path>/<name>``."""
    path = Path(path)
    if path.is_file() or (path / WEIGHTS_FILE).is_file():
        return path
    candidates = [d for d in path.glob("checkpoint_*") if (d / WEIGHTS_FILE).is_file()] if path.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"no PudNet checkpoint at {str(path)!r}: expected {WEIGHTS_FILE}, a checkpoint "
                                "directory holding it, or a run directory with checkpoint_* folders "
                                "(python jobs/train.py writes runs/pudnet-embedded)")
    return max(candidates, key=_step)


def _step(directory: Path) -> tuple[int, str]:
    """(step from state.json, name): the name breaks ties and orders checkpoints without a readable state."""
    try:
        return read_step(directory), directory.name
    except (OSError, ValueError, KeyError, TypeError):
        return -1, directory.name


def write_state(directory: str | os.PathLike, step: int, metrics: dict) -> None:
    """A training checkpoint's ``state.json``: its step (what a resumed run continues from) and metrics."""
    Path(directory, STATE_FILE).write_text(json.dumps({"step": step, "metrics": metrics}, indent=1))


def read_step(directory: str | os.PathLike) -> int:
    """The step ``write_state`` wrote into the training checkpoint in ``directory``."""
    return parse_step(Path(directory, STATE_FILE).read_bytes())


def parse_step(state: bytes) -> int:
    """The step in a ``state.json``'s bytes: the one reader of the resume step (local or on any filesystem)."""
    return int(json.loads(state)["step"])


def load(path: str | os.PathLike, device: torch.device | str | None = None) -> LoadedCheckpoint:
    """Rebuild a PudNet from a checkpoint directory or its ``model.safetensors`` file; FileNotFoundError if there
    is none, ValueError naming the path if the file is not a PudNet checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no PudNet checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} file (format={metadata.get('format')!r})")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:   # another file given by mistake (a run's JSON, say), or a truncated one
        raise ValueError(f"{path}: not a {FORMAT} file: not readable as safetensors ({e}); give a checkpoint "
                         f"directory or its {WEIGHTS_FILE}") from None
    model = PudNet(PudNetConfig.from_json(metadata["pudnet_config"]))
    model.load_state_dict(state)
    split = ClassSplit.from_json(metadata["class_split"]) if "class_split" in metadata else None
    if device is not None:
        model = model.to(device)
    return LoadedCheckpoint(model.eval(), split, metadata)
