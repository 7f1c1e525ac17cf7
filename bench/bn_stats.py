"""BatchNorm statistics from a sample against exact statistics over every support image (issue 12).

    python bench/bn_stats.py --out bench/results_bn_stats.md
    python bench/bn_stats.py --checkpoint runs/pudnet-resnet18 --out bench/results_bn_stats.md   # a trained model

Prediction takes each BatchNorm layer's statistics from one pass over a seeded, class-stratified sample of at
most ``stats_images`` support images (128 by default; at K=1000 that is fewer than one image per class), then
fits the ridge head on every support image. This script predicts the same K-way task with the sample at 1 image
per class, at the model's ``stats_images``, at 512 (the default before commit 3bf1775) and over all N support
images (exact, one pass), and
scores each on held-out images of the same classes. Data: every embedded source in the cache, 32 px, classes
with at least S + 10 images. Without ``--checkpoint`` the hypernetwork is untrained (a generated random body
plus the fitted ridge head): the statistics still set the features the head is fitted on.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys

import numpy as np
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.model import checkpoint
from pudnet.data.tasks import to_tensor
from pudnet.data.sources import load_class_bank
from pudnet.model.predict import predict

SOURCES = ["digits", "mnist", "animal_mnist", "fashion_mnist", "emoji", "openclipart"]


def task(support: int, max_test: int, seed: int):
    """Support and test arrays over every class with at least ``support`` + 10 images."""
    bank, _ = load_class_bank(SOURCES, image_size=32, max_per_class=support + max_test)
    rng = np.random.default_rng(seed)
    classes = [c for c in range(len(bank.class_names)) if (bank.labels == c).sum() >= support + 10]
    sup, test = [], []
    for label, c in enumerate(classes):
        rows = rng.permutation(np.flatnonzero(bank.labels == c))
        sup.append((rows[:support], label))
        test.append((rows[support:], label))
    pick = lambda parts: (bank.images[np.concatenate([r for r, _ in parts])],  # noqa: E731
                          np.concatenate([np.full(len(r), label) for r, label in parts]))
    return pick(sup), pick(test), [bank.class_names[c] for c in classes]


def accuracy(model: PudNet, state: dict, images: np.ndarray, labels: np.ndarray) -> float:
    cfg = model.cfg
    with torch.no_grad():
        hits = sum(int((model.target(state, to_tensor(images[r], cfg.mean, cfg.std)).argmax(1).numpy()
                        == labels[r]).sum()) for r in np.array_split(np.arange(len(labels)), 8))
    return hits / len(labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="PudNet checkpoint (default: an untrained ResNet-18 PudNet, seed 0)")
    parser.add_argument("--support", type=int, default=20, help="support images per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sample seeds of predict()")
    parser.add_argument("--out", help="Markdown file")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    (images, labels), (test_images, test_labels), names = task(args.support, 40, seed=0)
    k, n = len(names), len(labels)
    if args.checkpoint:
        model = checkpoint.load(args.checkpoint).model
    else:
        torch.manual_seed(0)
        model = PudNet(PudNetConfig(arch="resnet18", target_kwargs={}, max_classes=1000, head="ridge")).eval()
    if model.cfg.max_classes < k:
        raise ValueError(f"the checkpoint supports {model.cfg.max_classes} classes; this task has {k}")
    base = model.cfg
    variants = {f"sample of {k} (1 per class)": k,
                f"sample of {min(base.stats_images, n)} (the model's stats_images)": base.stats_images,
                f"sample of {min(512, n)} (the default before 3bf1775)": 512, f"exact: all {n} support images": n}
    rows, exact_stats = [], None
    for name, stats_images in reversed(variants.items()):  # exact first: the others are compared with it
        model.cfg = dataclasses.replace(base, stats_images=stats_images, memory_mb=max(base.memory_mb, 8192))
        accs, gaps = [], []
        for seed in args.seeds:
            state = predict(model, images, labels, names, self_check_fraction=0, seed=seed).state_dict
            accs.append(accuracy(model, state, test_images, test_labels))
            exact_stats = exact_stats or {key: v for key, v in state.items() if key.endswith("running_var")}
            gaps.append(max(float(((state[key] - v).abs() / v.clamp_min(1e-6)).median()) for key, v in
                            exact_stats.items()))
        rows.append((name, statistics.mean(accs), min(accs), max(accs), statistics.mean(gaps)))
    model.cfg = base
    lines = ["# BatchNorm statistics: sample against exact", "",
             f"`python bench/bn_stats.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             f"{model.cfg.arch}, {'checkpoint ' + args.checkpoint if args.checkpoint else 'untrained PudNet (seed 0)'}"
             f", ridge head; K={k} classes from {', '.join(SOURCES)} at 32 px, S={args.support} support images "
             f"per class (N={n}), {len(test_labels)} held-out test images; predict() seeds {args.seeds} (they "
             f"draw the sample). 1-minute load average {load:.1f} on {os.cpu_count()} CPUs (accuracy does not "
             "depend on it).", "",
             "| BatchNorm statistics from | test accuracy % (mean) | min | max | running_var rel. diff. from exact "
             "(worst layer's median) |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {100 * a:.1f} | {100 * lo:.1f} | {100 * hi:.1f} | {gap:.3f} |"
              for name, a, lo, hi, gap in reversed(rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
