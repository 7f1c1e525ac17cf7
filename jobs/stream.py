"""The training stream on Ray Data: rows are sub-datasets that CPU actors build from the shards
(``pudnet.data.stream.SubDatasetBuilder``); Ray Train hands each worker its share."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import ray

from jobs.train_state import resumed_step
from pudnet.data.augment import Augmentation
from pudnet.data.stream import SubDatasetBuilder
from pudnet.data.tasks import ClassDraw

if TYPE_CHECKING:   # jobs/train.py imports this module
    from jobs.train import TrainConfig


def make_stream(cfg: TrainConfig, roots: list[str], classes: list[str], run_dir: str) -> ray.data.Dataset:
    """The training stream: rows are sub-datasets of ``classes``, built by CPU actors from the shards.

    Ray Train calls this at every (re)start of the worker group, so a resumed run continues with the
    tasks after its checkpoint instead of replaying the first ones. Each worker takes its equal share
    through ``get_dataset_shard``; task indices are random draws, so the stream needs no shuffle.
    """
    per_step = cfg.tasks_per_step * cfg.num_workers
    start = resumed_step(run_dir)
    # One row per global step holding its task ids, built right here: ray.data.range and from_arrow would
    # run tasks of a whole CPU, which a small or fully used cluster does not have, and the stream would stall.
    steps = [{"id": np.arange(s * per_step, (s + 1) * per_step)} for s in range(start, max(cfg.steps, start + 1))]
    return ray.data.from_items(steps, override_num_blocks=min(len(steps), 200)).map_batches(
        SubDatasetBuilder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.stream_actors),
        num_cpus=cfg.stream_cpus,
        fn_constructor_kwargs=dict(roots=roots, classes=classes, ways=cfg.ways, shots=cfg.shots,
                                   queries=cfg.queries, seed=cfg.seed, window_rows=cfg.window_rows,
                                   cache_mb=cfg.stream_cache_mb, augmentation=Augmentation.from_config(cfg),
                                   ways_max=cfg.ways_max,
                                   shots_max=cfg.shots_max, max_support=cfg.max_support,
                                   draw=ClassDraw.from_config(cfg)))
