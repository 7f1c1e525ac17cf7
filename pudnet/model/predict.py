"""One call from a labelled dataset to loadable target weights: what serving and evaluation share."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pudnet.data.tasks import to_tensor
from .hypernetwork import PudNet


@dataclass
class Prediction:
    state_dict: dict[str, torch.Tensor]   # the target's full state_dict, on the CPU, torchvision key names
    metadata: dict[str, str]              # text-only, ready for safetensors metadata
    self_check_accuracy: float | None     # accuracy of these weights on held-out uploaded images


def validate_dataset(model: PudNet, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> None:
    """Raise ValueError naming the problem; messages are safe to show to an HTTP client."""
    cfg, k = model.cfg, len(class_names)
    if not 2 <= k <= cfg.max_classes:
        raise ValueError(f"{k} classes: this model supports 2..{cfg.max_classes}")
    r = cfg.image_size
    if images.dtype != np.uint8 or images.shape[1:] != (r, r, 3):
        raise ValueError(f"images must be (N, {r}, {r}, 3) uint8 after decoding, got {images.shape} {images.dtype}")
    if labels.shape != (len(images),):
        raise ValueError(f"{len(images)} images but {labels.shape[0] if labels.ndim else 0} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k})")
    counts = np.bincount(labels, minlength=k)
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"classes without images: {empty[:10]}")


def self_check_split(labels: np.ndarray, fraction: float, min_per_class: int, seed: int) -> np.ndarray | None:
    """Boolean mask of held-out rows (``fraction`` of each class), or None if a class is too small."""
    counts = np.bincount(labels)
    if fraction <= 0 or counts.min() < min_per_class:
        return None
    rng, held = np.random.default_rng(seed), np.zeros(len(labels), dtype=bool)
    for c, n in enumerate(counts):
        rows = np.flatnonzero(labels == c)
        held[rng.choice(rows, max(1, round(fraction * n)), replace=False)] = True
    return held


@torch.no_grad()
def predict(model: PudNet, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
            self_check_fraction: float = 0.15, min_per_class: int = 5, seed: int = 0,
            checkpoint_id: str = "", memory_mb: int | None = None) -> Prediction:
    """Generate K-way target weights from (N, R, R, 3) uint8 images and (N,) labels.

    When every class has at least ``min_per_class`` images, ``self_check_fraction`` of each
    class is held out: weights come from the rest and are scored on it, so the caller knows
    how good the returned weights are. The head's row k is class ``class_names[k]``. Images pass
    through the networks in chunks (``PudNet.chunk_images``) whose activations fit in ``memory_mb`` (default:
    the model's ``cfg.memory_mb``); see ``PudNet.forward`` for which images each part reads.
    """
    validate_dataset(model, images, labels, class_names)
    cfg, device = model.cfg, next(model.parameters()).device
    held = self_check_split(labels, self_check_fraction, min_per_class, seed)
    support = ~held if held is not None else np.ones(len(labels), dtype=bool)
    start = time.perf_counter()
    pixels = torch.from_numpy(np.ascontiguousarray(images[support])).to(device)   # uint8: normalised per chunk
    weights = model(pixels, torch.from_numpy(labels[support]).to(device), len(class_names), memory_mb=memory_mb,
                    seed=seed)
    if torch.accelerator.is_available():  # accelerator kernels are asynchronous: time the work, not the launch
        torch.accelerator.synchronize()
    generate_s = time.perf_counter() - start
    accuracy = None
    if held is not None:
        chunk, rows = model.chunk_images(memory_mb), np.flatnonzero(held)
        hits = sum(int((model.target(weights, to_tensor(images[r], cfg.mean, cfg.std).to(device)).argmax(1).cpu()
                        .numpy() == labels[r]).sum()) for r in np.array_split(rows, -(-len(rows) // chunk)))
        accuracy = hits / len(rows)
    metadata = {
        "architecture": cfg.arch, "target_kwargs": json.dumps(cfg.target_kwargs),
        "class_names": json.dumps(list(class_names)), "num_classes": str(len(class_names)),
        "input_size": json.dumps([3, cfg.image_size, cfg.image_size]),
        "normalization": json.dumps({"mean": cfg.mean, "std": cfg.std, "scale": "pixels / 255, then (x - mean) / std"}),
        "pudnet_checkpoint": checkpoint_id, "generate_seconds": f"{generate_s:.6f}",
        "support_images": str(int(support.sum())),
        "self_check_images": str(int(held.sum()) if held is not None else 0),
        "self_check_accuracy": "" if accuracy is None else f"{accuracy:.6f}",
    }
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    return Prediction(state, metadata, accuracy)
