"""Sub-datasets built just in time from shards: the batch functions of the meta-training stream.

Ray Data calls :class:`SubDatasetBuilder` through ``map_batches`` on batches of task indices; the
same class runs in-process for benchmarks and tests. Task i depends only on (seed, i) and the
shards, so a retried Ray task rebuilds exactly what it lost. Only the ``train`` split of the given
classes is ever read: test images and held-out classes cannot reach meta-training.
"""
from __future__ import annotations

import json
import zlib
from typing import Callable, Sequence

import numpy as np

from .augment import Augmentation
from .bank import split_classes_by_group
from .tasks import ClassDraw, ClassSplit, SubDataset, class_source, task_shape
from .shards import BlockReader, Catalog
from pudnet.files import filesystem, join

STREAM_KEYS = ("task", "class_names", "support_x", "support_y", "query_x", "query_y")


def plan_task(index: int, block_rows: Sequence[Sequence[int]], ways: int, shots: int, queries: int, seed: int,
              window_rows: int = 0, sources: Sequence[str] = (),
              draw: ClassDraw = ClassDraw()) -> list[tuple[int, list[int], np.ndarray]]:
    """Which images task ``index`` uses: per class (K, random order) its blocks and S+Q rows among them.

    ``block_rows[c]`` lists the rows of class c's blocks. Each class reads a random run of consecutive
    blocks holding at least max(S+Q, ``window_rows``) rows, so a task costs K short reads however big
    the source is; ``window_rows`` trades that I/O for more varied image combinations. ``sources[c]`` is
    class c's source, which ``draw`` needs unless it is the default uniform draw over classes.
    Returns [(class position, block positions, (S+Q,) rows into those blocks' concatenation)].
    """
    if draw.needs_sources and len(sources) != len(block_rows):
        raise ValueError(f"{draw} needs the source of each of the {len(block_rows)} classes, got {len(sources)}")
    rng = np.random.default_rng([seed, index])
    need, plan = shots + queries, []
    for c in draw.pick(rng, seed, index, sources or ("",) * len(block_rows), ways):
        sizes = block_rows[c]
        start, chosen, total = int(rng.integers(len(sizes))), [], 0
        while total < max(need, window_rows) and len(chosen) < len(sizes):
            chosen.append((start + len(chosen)) % len(sizes))
            total += sizes[chosen[-1]]
        plan.append((int(c), chosen, rng.choice(total, need, replace=False)))
    return plan


def step_tasks(ids: Sequence[int], sample: Callable[[int, int, int], SubDataset], seed: int, ways: tuple[int, int],
               shots: tuple[int, int], max_support: int,
               augmentation: Augmentation = Augmentation()) -> list[SubDataset]:
    """The tasks ``ids`` of one training step, as the stream and in-process runs (``pudnet.model.recipe``) both
    build them. ``sample(index, K, S)`` reads a task's images. When ``ways`` or ``shots`` (min, max) vary, (K, S)
    is ``task_shape`` of the first id, shared by the whole step so its tasks stack; each task is then augmented
    (``augmentation``) with a generator seeded by (seed, its id)."""
    k, s = ways[0], shots[0]
    if ways[1] > ways[0] or shots[1] > shots[0]:
        k, s = task_shape(seed, int(ids[0]), ways, shots, max_support)
    tasks = [sample(int(i), k, s) for i in ids]
    if augmentation:
        tasks = [augmentation.apply(t, np.random.default_rng([seed, int(i), 1])) for i, t in zip(ids, tasks)]
    return tasks


def trainable_classes(catalog: Catalog, classes: Sequence[str], images: int) -> tuple[list[str], list[str]]:
    """(classes with at least ``images`` train images, the others): small classes cannot fill a task."""
    kept = [c for c in classes if catalog.count(c, "train") >= images]
    return kept, [c for c in classes if c not in set(kept)]


class SubDatasetBuilder:
    """``{"id": task indices, (B,) or (B, n)} -> a sub-dataset per index``, of ``classes``, from shards at ``roots``.

    Output columns: task (B,), class_names (B,) JSON lists of K names (label order), support_x
    (B, K*S, R, R, 3) uint8, support_y (B, K*S) int64, query_x (B, K*Q, R, R, 3), query_y (B, K*Q).
    Pixels stay uint8 (4x less traffic than float); the consumer normalises on its device.

    With ``ways_max``/``shots_max`` > 0, each call draws its own (K, S) (``pudnet.data.tasks.task_shape``: K in
    [ways, ways_max], S log-uniform in [shots, shots_max], K*S <= ``max_support``) from its first task
    index, and all its tasks share it: one global step of the training stream is one call, so the DDP
    workers of a step get equal work, and tasks stack into arrays. ``draw`` picks each task's classes by
    their sources (the name's part before ``/``): ``pudnet.data.tasks.ClassDraw``.
    """

    def __init__(self, roots: Sequence[str], classes: Sequence[str], ways: int, shots: int, queries: int, seed: int,
                 window_rows: int = 0, cache_mb: int = 512, augmentation: Augmentation = Augmentation(),
                 ways_max: int = 0, shots_max: int = 0, max_support: int = 1000, draw: ClassDraw = ClassDraw()):
        catalog = Catalog(roots)
        catalog.check(classes)
        most_ways, most_shots = max(ways, ways_max), max(shots, shots_max)
        _, small = trainable_classes(catalog, classes, most_shots + queries)
        if small or len(classes) < most_ways:
            raise ValueError(f"{len(classes)} classes for {most_ways}-way tasks; {len(small)} have < "
                             f"{most_shots + queries} train images ({small[:5]}): "
                             "pass classes from trainable_classes()")
        self.sources = tuple(map(class_source, classes))
        if draw.within_source and max(map(self.sources.count, self.sources)) < most_ways:
            raise ValueError(f"within_source={draw.within_source}: needs a source with at least {most_ways} "
                             "classes (the most per task)")
        self.draw = draw
        self.ways_range, self.shots_range, self.max_support = (ways, most_ways), (shots, most_shots), max_support
        self.classes, self.seed, self.window_rows = tuple(classes), seed, window_rows
        self.queries = queries
        self.augmentation = augmentation
        self.blocks = [catalog.blocks(name, "train") for name in self.classes]
        self.block_rows = [[b.rows for b in blocks] for blocks in self.blocks]
        self.reader = BlockReader(catalog.image_size, cache_mb << 20)
        self.no_test = np.zeros((0, catalog.image_size, catalog.image_size, 3), np.uint8)

    def read(self, index: int, ways: int, shots: int) -> SubDataset:
        """Task ``index`` with K = ``ways``, S = ``shots``, not augmented (``step_tasks`` does that)."""
        support, query, names = [], [], []
        for c, blocks, rows in plan_task(index, self.block_rows, ways, shots, self.queries, self.seed,
                                         self.window_rows, self.sources, self.draw):
            images = np.concatenate([self.reader.read(self.blocks[c][b]) for b in blocks])[rows]
            support.append(images[:shots])
            query.append(images[shots:])
            names.append(self.classes[c])
        labels = np.arange(ways)
        return SubDataset(tuple(names), np.concatenate(support), np.repeat(labels, shots), np.concatenate(query),
                          np.repeat(labels, self.queries), self.no_test, np.zeros(0, np.int64))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.ravel(batch["id"])
        subs = step_tasks(ids, self.read, self.seed, self.ways_range, self.shots_range, self.max_support,
                          self.augmentation)
        out = {key: np.stack([getattr(sub, key) for sub in subs]) for key in STREAM_KEYS[2:]}
        return {"task": ids, "class_names": np.array([json.dumps(sub.class_names) for sub in subs], dtype=object), **out}


def subdatasets(batch: dict[str, np.ndarray]) -> list[SubDataset]:
    """A stream batch as SubDatasets (no test images: meta-training never sees any).

    Arrays are made writable (Ray hands out read-only views, which torch.from_numpy warns about).
    """
    no_test = np.zeros((0, *batch["support_x"].shape[2:]), np.uint8)
    return [SubDataset(tuple(json.loads(str(batch["class_names"][b]))), test_x=no_test, test_y=np.zeros(0, np.int64),
                       **{key: np.require(batch[key][b], requirements="W") for key in STREAM_KEYS[2:]})
            for b in range(len(batch["task"]))]


def class_split(data_dir: str, class_names: Sequence[str], heldout_sources: Sequence[str], intra_fraction: float,
                min_intra: int, seed: int) -> ClassSplit:
    """The class split of these classes and settings: read from ``data_dir`` if there, else made and written there.
    Classes move in :func:`pudnet.data.bank.split_group` groups, so near-identical classes (a digit across sources,
    a letter's cases, an icon name's variants) never straddle meta-train and intra-test."""
    key = json.dumps(["groups", sorted(class_names), sorted(heldout_sources), intra_fraction, min_intra, seed])
    fs, path = filesystem(join(data_dir, f"class_split-{zlib.crc32(key.encode()):08x}.json"))
    if fs.get_file_info(path).size:
        with fs.open_input_stream(path) as f:
            return ClassSplit.from_json(f.read().decode())
    split = split_classes_by_group(class_names, heldout_sources, intra_fraction, min_intra, seed)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(split.to_json().encode())
    return split
