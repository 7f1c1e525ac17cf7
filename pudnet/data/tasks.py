"""Class banks, class splits, preprocessing and the seeded sub-dataset sampler.

A *class bank* pools labelled images from one or more sources. Meta-training draws
sub-datasets (K classes x S support + Q query images, PudNet arXiv 2310.11862 Sec. 3)
from the meta-train classes; evaluation draws them from held-out classes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch


def class_source(name: str) -> str:
    """The source of a class named ``<source>/<class>``: the one rule for grouping and splitting by source."""
    return name.split("/", 1)[0]


@dataclass(frozen=True)
class ClassBank:
    """Images of many classes, possibly from several source datasets.

    Attributes:
        images: (N, R, R, 3) uint8, every source resized to one resolution R.
        labels: (N,) int64 index into ``class_names``.
        class_names: one per class, ``"<source>/<name>"`` so names never collide.
        class_sources: the source dataset of each class (the part before the ``/``).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N, R, R, 3) uint8, got {self.images.shape} {self.images.dtype}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be ({len(self.images)},), got {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")

    @property
    def class_sources(self) -> tuple[str, ...]:
        return tuple(map(class_source, self.class_names))

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def indices_by_class(self) -> list[np.ndarray]:
        """Row indices of each class, in ``class_names`` order."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(len(self.class_names) + 1))
        return [order[bounds[c]: bounds[c + 1]] for c in range(len(self.class_names))]

    @staticmethod
    def concat(banks: Sequence["ClassBank"]) -> "ClassBank":
        names, offset, labels = [], 0, []
        for bank in banks:
            names.extend(bank.class_names)
            labels.append(bank.labels + offset)
            offset += len(bank.class_names)
        if len(set(names)) != len(names):
            raise ValueError("class names collide across sources")
        return ClassBank(np.concatenate([b.images for b in banks]), np.concatenate(labels).astype(np.int64),
                         tuple(names))


def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, R, R, 3) uint8 -> (N, 3, R, R) float32 normalised; the one place pixels become inputs."""
    return normalize(torch.from_numpy(np.ascontiguousarray(images)), mean, std)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, R, R, 3) uint8 tensor -> (N, 3, R, R) float32 normalised, on the pixels' device."""
    x = pixels.permute(0, 3, 1, 2).float().div_(255)
    shape = dict(device=x.device)
    return (x - torch.tensor(mean, **shape).view(1, 3, 1, 1)) / torch.tensor(std, **shape).view(1, 3, 1, 1)


@dataclass(frozen=True)
class ClassSplit:
    """Which classes meta-training may see; written next to every checkpoint.

    intra_test: held-out classes of the meta-training sources (intra-dataset setting).
    inter_test: every class of the left-out sources (inter-dataset setting).
    """

    meta_train: tuple[str, ...]
    intra_test: tuple[str, ...]
    inter_test: tuple[str, ...]
    seed: int

    def __post_init__(self):
        seen = set(self.meta_train)
        leaked = seen & (set(self.intra_test) | set(self.inter_test))
        if leaked:
            raise ValueError(f"held-out classes appear in meta_train: {sorted(leaked)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ClassSplit":
        d = json.loads(text)
        return cls(tuple(d["meta_train"]), tuple(d["intra_test"]), tuple(d["inter_test"]), int(d["seed"]))


def split_classes(class_names: Sequence[str], heldout_sources: Sequence[str], intra_fraction: float,
                  min_intra: int, seed: int) -> ClassSplit:
    """Seeded class split: left-out sources whole, then a fraction of the remaining classes."""
    names = sorted(class_names)
    inter = [n for n in names if class_source(n) in heldout_sources]
    rest = [n for n in names if n not in set(inter)]
    n_intra = max(min_intra, round(intra_fraction * len(rest)))
    if n_intra >= len(rest):
        raise ValueError(f"{len(rest)} classes outside the left-out sources {list(heldout_sources)}: too few to "
                         f"hold out {n_intra} and still meta-train; add sources or lower intra_fraction/min_intra")
    picked = set(np.random.default_rng(seed).choice(len(rest), n_intra, replace=False).tolist())
    intra = [n for i, n in enumerate(rest) if i in picked]
    train = [n for i, n in enumerate(rest) if i not in picked]
    return ClassSplit(tuple(train), tuple(intra), tuple(inter), seed)


def task_shape(seed: int, index: int, ways: tuple[int, int], shots: tuple[int, int],
               max_support: int) -> tuple[int, int]:
    """(K, S) of task ``index``: K uniform in ``ways``, S log-uniform in ``shots`` (so small and large support
    sets both come up), then S lowered to keep K*S <= ``max_support`` (a training step's cost), never below
    shots[0]. Seeded by (seed, index) only."""
    if not (2 <= ways[0] <= ways[1] and 1 <= shots[0] <= shots[1]):
        raise ValueError(f"ways={ways}, shots={shots}: expected 2 <= min <= max and 1 <= min <= max")
    rng = np.random.default_rng([seed, index, 0x5A9E])
    k = int(rng.integers(ways[0], ways[1] + 1))
    s = int(round(np.exp(rng.uniform(np.log(shots[0]), np.log(shots[1] + 1))) - 0.5))
    return k, max(shots[0], min(s, shots[1], max_support // k))


@dataclass(frozen=True)
class ClassDraw:
    """How a task picks its K classes among classes of several sources (``TrainConfig.within_source`` and
    ``source_power``). The default is a uniform draw over classes.

    within_source: the share of tasks (decided by (seed, index) alone) whose K classes come from one source,
        drawn with weight n_s ** source_power among sources with at least K classes (n_s: its class count).
    source_power: across sources, each class is drawn with weight n_s ** (source_power - 1), so source s gets
        about n_s ** source_power of the draws (about: a class comes up at most once per task, so a source
        with fewer classes than its share cannot fill it). 1 weighs every class alike; 0 every source alike;
        in between, a big source (typeset glyphs) meets fewer tasks and a small one more, as multilingual
        models temper their languages' shares.
    """
    within_source: float = 0.0
    source_power: float = 1.0

    def __post_init__(self):
        for name in ("within_source", "source_power"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a value in [0, 1]")

    @classmethod
    def from_config(cls, cfg) -> "ClassDraw":
        return cls(within_source=cfg.within_source, source_power=cfg.source_power)

    @property
    def needs_sources(self) -> bool:
        """Whether the draw reads each class's source (the default uniform draw does not)."""
        return self != ClassDraw()

    def pick(self, rng: np.random.Generator, seed: int, index: int, sources: Sequence[str],
             ways: int) -> np.ndarray:
        """Positions of task ``index``'s K classes among classes whose sources are ``sources``, in random order.

        Whether a task is drawn within one source, and which, comes from a stream of its own seeded by
        (seed, index), so ``rng`` is left to the class draw; with ``source_power`` 1 that draw is the
        default's, and the defaults give the tasks of the code before either option existed.
        """
        pick = np.random.default_rng([seed, index, 0x0C1A55])   # its own stream: ``rng`` stays the old sequence
        if self.within_source and pick.random() < self.within_source:
            of = np.asarray(sources)
            names, counts = np.unique(of, return_counts=True)
            big = counts >= ways
            if not big.any():
                raise ValueError(f"within_source={self.within_source}: no source has {ways} classes "
                                 f"({dict(zip(names.tolist(), counts.tolist()))})")
            weight = counts[big] ** self.source_power
            members = np.flatnonzero(of == pick.choice(names[big], p=weight / weight.sum()))
            return members[rng.choice(len(members), ways, replace=False)]
        if self.source_power == 1:
            return rng.choice(len(sources), ways, replace=False)
        _, of, counts = np.unique(np.asarray(sources), return_inverse=True, return_counts=True)
        weight = counts[of] ** (self.source_power - 1.0)                # a class's share of its source's n ** power
        return rng.choice(len(sources), ways, replace=False, p=weight / weight.sum())


@dataclass(frozen=True)
class SubDataset:
    """One K-way task. Labels are 0..K-1 in ``class_names`` order, which is random per task.

    support_*: what the model (or SGD) learns from, S per class.
    query_*: Q per class; the meta-training loss, or SGD's validation split in evaluation.
    test_*: T per class from images never used for support or query; only for reporting.
    """

    class_names: tuple[str, ...]
    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tensors(self, part: str, mean: Sequence[float], std: Sequence[float],
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``part`` ("support", "query" or "test") as model inputs on ``device``: x (N, 3, R, R) normalised, y (N,)."""
        x, y = getattr(self, f"{part}_x"), getattr(self, f"{part}_y")
        return to_tensor(x, mean, std).to(device), torch.from_numpy(y).to(device)


class SubDatasetSampler:
    """Seeded sampler of K-way sub-datasets over a fixed set of classes.

    Test images never feed learning: they come from ``test_bank`` (the same classes' test split,
    e.g. ``pudnet.data.shards.read_class_bank(..., split="test")``) or, without one, from a seeded
    ``test_fraction`` of each class set aside once. Task i depends only on (seed, i): workers may
    sample any tasks in any order, or retry them.
    """

    def __init__(self, bank: ClassBank, classes: Sequence[str], seed: int, test_fraction: float = 0.2,
                 by_source: bool = False, test_bank: ClassBank | None = None):
        index = {name: i for i, name in enumerate(bank.class_names)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise ValueError(f"classes not in the bank: {unknown[:5]}")
        if not classes:
            raise ValueError("no classes to sample from")
        self.bank, self.seed, self.classes = bank, seed, tuple(classes)
        self.by_source = by_source
        self.test_images = bank.images if test_bank is None else test_bank.images
        by_class = dict(zip(bank.class_names, bank.indices_by_class()))
        test_by_class = {} if test_bank is None else dict(zip(test_bank.class_names, test_bank.indices_by_class()))
        rng = np.random.default_rng([seed, 0x5EED])
        self.train_pool, self.test_pool = {}, {}
        for name in self.classes:
            if test_bank is not None:
                self.train_pool[name] = by_class[name]
                self.test_pool[name] = test_by_class.get(name, np.zeros(0, np.int64))
                continue
            rows = rng.permutation(by_class[name])
            n_test = int(round(test_fraction * len(rows)))
            self.test_pool[name], self.train_pool[name] = rows[:n_test], rows[n_test:]
        self.groups = {}
        for name in self.classes:
            self.groups.setdefault(class_source(name) if by_source else "", []).append(name)

    def eligible(self, s: int, q: int, t: int) -> dict[str, list[str]]:
        """Per group, the classes with at least S + Q train-pool and T test-pool images."""
        return {g: [c for c in names if len(self.train_pool[c]) >= s + q and len(self.test_pool[c]) >= t]
                for g, names in self.groups.items()}

    def sample(self, index: int, k: int, s: int, q: int, t: int = 0, draw: ClassDraw = ClassDraw()) -> SubDataset:
        """Task ``index``: K classes in random order, S + Q train-pool and T test-pool images each.

        Only classes with enough images take part. With ``by_source`` every task is drawn within one
        source (tasks cycle over the sources with K such classes); otherwise ``draw`` picks them, as the
        training stream does.
        """
        rng = np.random.default_rng([self.seed, index])
        eligible = self.eligible(s, q, t)
        groups = [g for g in sorted(eligible) if len(eligible[g]) >= k]
        if not groups:
            raise ValueError(f"no {'source has' if self.by_source else 'pool has'} {k} classes with "
                             f"{s + q} train and {t} test images (eligible: { {g: len(c) for g, c in eligible.items()} })")
        pool = eligible[groups[index % len(groups)]]
        sources = [class_source(name) for name in pool]
        chosen = [pool[i] for i in draw.pick(rng, self.seed, index, sources, k)]
        parts = {"support": [], "query": [], "test": []}
        for name in chosen:
            rows = rng.choice(self.train_pool[name], s + q, replace=False)
            parts["support"].append(rows[:s])
            parts["query"].append(rows[s:])
            parts["test"].append(rng.choice(self.test_pool[name], t, replace=False))
        out = {}
        for part, per_class in parts.items():
            rows = np.concatenate(per_class).astype(np.int64)
            out[f"{part}_x"] = (self.test_images if part == "test" else self.bank.images)[rows]
            out[f"{part}_y"] = np.repeat(np.arange(k), [len(r) for r in per_class]).astype(np.int64)
        return SubDataset(tuple(chosen), **out)
