"""Tiny shards and checkpoint records, as jobs/train.py leaves them, for tests of what reads a run (no Ray)."""
import dataclasses
import json
from pathlib import Path

import numpy as np

from jobs.train import TrainConfig
from pudnet import PudNetConfig
from pudnet.data.shards import write_bank
from pudnet.data.tasks import ClassBank, ClassSplit, split_classes


TINY = PudNetConfig(target_kwargs={"depth": 2, "width": 8}, encoder_width=4, hidden=8, layer_embedding=4,
                    max_classes=5)     # a PudNet small enough to build and run in milliseconds


def record(model, split, roots, **train) -> dict[str, str]:
    """The metadata jobs/train.py stores with every checkpoint."""
    cfg = TrainConfig(model=model.cfg, **train)
    return {"train_config": json.dumps(dataclasses.asdict(cfg)), "shard_roots": json.dumps(roots)}


def two_tiny_sources(base: Path) -> tuple[list[str], ClassSplit]:
    """Shards of two sources of 4 classes, 15 images each (3 test), and a split that leaves "other" out whole.

    The second is a folder source whose output name ("renamed") is not its class-name prefix ("other")."""
    rng = np.random.default_rng(0)
    names = tuple(f"{s}/c{i}" for s in ("seen", "other") for i in range(4))
    labels = np.repeat(np.arange(len(names)), 15)
    images = (rng.integers(0, 100, (len(labels), 32, 32, 3)) + 20 * (labels % 4)[:, None, None, None]).astype(np.uint8)
    roots = [str(base / "shards" / "seen"), str(base / "shards" / "renamed")]
    for root, part in zip(roots, (slice(0, 60), slice(60, 120))):
        bank = ClassBank(images[part], labels[part] - labels[part].min(), names[:4] if part.start == 0 else names[4:])
        write_bank(bank, root, root.rsplit("/", 1)[1], {"test": 1}, test_fraction=0.2)
    return roots, split_classes(names, ["other"], 0.5, 2, seed=0)
