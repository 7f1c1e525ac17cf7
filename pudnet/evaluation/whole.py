"""The paper's whole-dataset protocol (arXiv 2310.11862 Sec. 4): a dataset's classes form ONE task.

S train images per class are the support set (S in e.g. {10, 100, all}); the test set is the whole
test split of those classes. Adam from scratch stops on a validation split cut from the support set
(``val_fraction`` of each class's S images, at least one) and trains on the rest; every other method
learns from all S images. Supports are nested: a class's 10 images are among its 100. The methods
and their timing are ``pudnet.evaluation.episodes``'s.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pudnet.data.tasks import ClassBank, ClassSplit, SubDataset
from .episodes import METHOD_LABELS, Evaluator, evaluate_tasks
from pudnet.data.shards import Catalog, read_class_bank

WHOLE_METHODS = ("ncm_pixels", "random_prototype", "linear_probe", "pudnet", "pudnet_ft1epoch", "sgd_1epoch",
                 "sgd_converged")


def shots_label(shots: int) -> str:
    return str(shots) if shots else "all"


def whole_tasks(split: ClassSplit, catalog: Catalog, shots: tuple[int, ...], intra_classes: int, max_classes: int,
                seed: int) -> dict[str, list[str]]:
    """{task name: classes}: ``intra_classes`` seeded held-out classes with at least the largest finite S
    train images ("intra"), and every left-out class of each shard directory ("inter: <its source>"),
    named by the directory's manifest, never by class-name prefixes. At most ``max_classes`` per task."""
    needed = max([s for s in shots if s] + [2])
    rng = np.random.default_rng(seed)
    usable = lambda c, n: catalog.count(c, "train") >= n and catalog.count(c, "test") >= 1
    known = set(catalog.class_names)
    intra = [c for c in split.intra_test if c in known and usable(c, needed)]
    tasks = {"intra": sorted(rng.choice(intra, min(intra_classes, max_classes, len(intra)), replace=False).tolist())}
    inter = set(split.inter_test)
    for manifest in catalog.manifests:
        classes = [c for c in manifest.classes if c in inter and usable(c, 2)]
        tasks[f"inter: {manifest.source}"] = sorted(rng.choice(classes, min(max_classes, len(classes)),
                                                               replace=False).tolist())
    return {name: classes for name, classes in tasks.items() if len(classes) >= 2}


def whole_task(train: ClassBank, test: ClassBank, shots: int, val_fraction: float,
               seed: int) -> tuple[SubDataset, torch.Tensor]:
    """The task over every class of ``train`` (labels in its class order) and Adam's support rows.

    ``shots`` train images per class (0 or more than a class has: all of them); query = the
    validation cut, a subset of the support set; test = all of ``test``, whose classes must match.
    """
    if train.class_names != test.class_names:
        raise ValueError("train and test banks must hold the same classes in the same order")
    support, val = [], []
    for c, rows in enumerate(train.indices_by_class()):
        rows = np.random.default_rng([seed, c]).permutation(rows)[:shots or None]
        n_val = max(1, round(val_fraction * len(rows)))
        if len(rows) <= n_val:
            raise ValueError(f"class {train.class_names[c]} has {len(rows)} train images: too few to cut a "
                             f"validation split and still train (need at least {n_val + 1})")
        start = sum(len(r) for r in support)
        support.append(rows)
        val.append(np.arange(start, start + n_val))
    rows, val = np.concatenate(support), np.concatenate(val)
    x, y = train.images[rows], train.labels[rows]
    task = SubDataset(train.class_names, x, y, x[val], y[val], test.images, test.labels)
    return task, torch.from_numpy(np.setdiff1d(np.arange(len(rows)), val))


def read_whole_banks(roots: list[str], split: ClassSplit, shots: tuple[int, ...], intra_classes: int,
                     max_classes: int, seed: int, max_per_class: int | None = None
                     ) -> Iterator[tuple[str, list[str], ClassBank, ClassBank]]:
    """(task name, classes, train bank, test bank) for each of ``whole_tasks``, read from the shards at
    ``roots`` one task at a time: what ``jobs/evaluate.py`` scores."""
    for name, classes in whole_tasks(split, Catalog(roots), shots, intra_classes, max_classes, seed).items():
        yield (name, classes, *(read_class_bank(roots, classes, part, max_per_class) for part in ("train", "test")))


def read_whole_tasks(roots: list[str], split: ClassSplit, shots: tuple[int, ...], intra_classes: int,
                     max_classes: int, seed: int, max_per_class: int | None = None,
                     val_fraction: float = 0.1) -> dict[tuple[str, int], tuple[SubDataset, torch.Tensor]]:
    """{(task name, S): (``whole_task``, Adam's rows)}: ``jobs/evaluate.py``'s tasks, for in-process
    benchmarks (``bench/``)."""
    return {(name, s): whole_task(train, test, s, val_fraction, seed)
            for name, _, train, test in read_whole_banks(roots, split, shots, intra_classes, max_classes, seed,
                                                         max_per_class)
            for s in shots}


def evaluate_whole(evaluator: Evaluator, train: ClassBank, test: ClassBank, shots: tuple[int, ...],
                   methods: tuple[str, ...] = WHOLE_METHODS, val_fraction: float = 0.1, seed: int = 0,
                   progress=None) -> dict:
    """{S label: evaluate_tasks's result for the one task, plus its image counts}, S in ``shots`` order.

    The first S also runs once untimed (warm-up), as in ``evaluate_tasks``.
    """
    out = {}
    for i, s in enumerate(progress(shots) if progress else shots):
        task, sgd_rows = whole_task(train, test, s, val_fraction, seed)
        result = evaluate_tasks(evaluator, [(task, sgd_rows)], methods, warm_up=i == 0)
        counts = np.bincount(task.support_y, minlength=task.num_classes)
        out[shots_label(s)] = {**result, "support_images": int(len(task.support_y)), "test_images":
                               int(len(task.test_y)), "min_per_class": int(counts.min()),
                               "max_per_class": int(counts.max()), "adam_train_images": int(len(sgd_rows))}
    return out


def whole_markdown(name: str, result: dict) -> str:
    """One table per task: a row per method, a column per S (accuracy %, seconds), then the time ratio."""
    per_s = result["shots"]
    first = next(iter(per_s.values()))
    header = [f"S={s} ({r['support_images']} images)" for s, r in per_s.items()]
    rows = [f"**{name}**: {len(result['classes'])} classes, one task; test = the whole test split "
            f"({first['test_images']} images); cells: test accuracy % (wall seconds)", "",
            "| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for method in first["methods"]:
        cells = [f"{100 * r['methods'][method]['accuracy']:.1f} ({r['methods'][method]['seconds']:.3g} s)"
                 if method in r["methods"] else "" for r in per_s.values()]
        rows.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    if all("time_to_equal_accuracy" in r for r in per_s.values()):
        cells = []
        for r in per_s.values():
            t = r["time_to_equal_accuracy"]
            cells.append(f"{'' if t['reached'] else '> '}{t['ratio']:.3g}")
        rows.append("| time-to-equal-accuracy ratio (Adam's time to PudNet's accuracy / PudNet's time; "
                    "> : never reached, lower bound) | " + " | ".join(cells) + " |")
    return "\n".join(rows)
