"""Task augmentation for meta-training: more distinct classes and less reliance on one image style.

A few dozen real classes is a small meta-training set (the paper had 800 ImageNet groups), so
each class of a sub-dataset gets one random transform shared by all its images: a rotation by a
multiple of 90 degrees and/or inverted intensities make a new class that looks like a new source
(dark strokes on white versus white on black), as rotated Omniglot classes do in few-shot
learning. Optionally a share of whole sub-datasets is turned grey, so colour cannot stand in for shape (half
the class bank is colour art; Fashion-MNIST is grey); it did not help (bench/results_bank_scale.md), so it is
off by default. Each image then gets a small random shift.
Pure numpy: Ray Data tasks can call it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .tasks import SubDataset


def _shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Translate each (R, R, 3) image by up to ``max_shift`` pixels, filling with its edge colour."""
    if max_shift == 0:
        return images
    n, r = images.shape[:2]
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(r)                                           # (N, R)
    cols = dx[:, None] + np.arange(r)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _grey(images: np.ndarray) -> np.ndarray:
    """(N, R, R, 3) uint8 -> the same shape, each pixel's luminance (ITU-R 601) in all three channels."""
    luma = np.rint(images @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The training stream's per-task augmentation (``TrainConfig.augment_*``). All zero, this class's default
    (not the training job's), is off."""
    p_class: float = 0.0      # share of a task's classes rotated and/or inverted into new classes
    max_shift: int = 0        # per-image random shift, pixels
    p_grey: float = 0.0       # share of tasks turned grey whole (no draw at 0, so older streams stay the same)

    @classmethod
    def from_config(cls, cfg) -> "Augmentation":
        return cls(p_class=cfg.augment_p_class, max_shift=cfg.augment_shift, p_grey=cfg.augment_p_grey)

    def __bool__(self) -> bool:
        return bool(self.p_class or self.max_shift or self.p_grey)

    def apply(self, sub: SubDataset, rng: np.random.Generator) -> SubDataset:
        """A copy of ``sub``, transformed. Labels and class order are unchanged: only pixels move, so support
        and query of a class still match. Test images are transformed like their class too."""
        parts = {name: getattr(sub, name).copy() for name in ("support_x", "query_x", "test_x")}
        names = list(sub.class_names)
        for c in range(sub.num_classes):
            if rng.random() >= self.p_class:
                continue
            turns, invert = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            if turns == 0 and not invert:
                invert = True
            names[c] = f"{names[c]}@rot{90 * turns}{'-inv' if invert else ''}"
            for part, labels in (("support_x", sub.support_y), ("query_x", sub.query_y), ("test_x", sub.test_y)):
                images = np.rot90(parts[part][labels == c], turns, axes=(1, 2))
                parts[part][labels == c] = 255 - images if invert else images
        grey = self.p_grey > 0 and rng.random() < self.p_grey
        for part in parts:
            parts[part] = _shift(_grey(parts[part]) if grey else parts[part], rng, self.max_shift)
        return dataclasses.replace(sub, class_names=tuple(names), **parts)
