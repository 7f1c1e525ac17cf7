"""Ablations of PudNet's design choices on the embedded default, one command, no Ray (runs on a GPU box too).

    python bench/ablations.py --out bench/results_ablations.md            # ~25 min on 2 CPU cores
    python bench/ablations.py --steps 50 --tasks 5                         # a quick check of the script

Every variant is meta-trained in-process with the same seed, steps and sub-datasets, then scored on the
same unseen sub-datasets (the held-out classes and the left-out source of the default split), so the
differences against the default are paired. Variants: the default (ridge head, task augmentation,
rank-8 kernel term); the prototype head (the default before the ridge head); the head generated from class embeddings (arXiv 2310.11862's generator, the
finding issue 5 asks to measure); no task augmentation; no low-rank kernel term (channel modulation
only); and the default model given the sketch of a *different* sub-dataset, which shows whether the
generated weights depend on the dataset beyond the support-set BatchNorm statistics and the fitted head.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import time

import numpy as np
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.data.augment import augment
from pudnet.data.tasks import SubDatasetSampler, split_classes
from pudnet.data.sources import DEFAULT_SOURCES, load_class_bank
from pudnet.evaluation.episodes import Evaluator
from pudnet.model.meta import Episode, train_step

SOURCES = DEFAULT_SOURCES
VARIANTS = {  # name -> (PudNetConfig overrides, task augmentation on)
    "default": ({}, True),
    "prototype head": ({"head": "prototype"}, True),
    "generated head": ({"head": "generated"}, True),
    "no task augmentation": ({}, False),
    "no low-rank kernel term": ({"lowrank": 0}, True),
}


def meta_train(cfg: PudNetConfig, sampler: SubDatasetSampler, steps: int, use_augment: bool, seed: int) -> PudNet:
    torch.manual_seed(seed)
    model = PudNet(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    for step in range(steps):
        task = sampler.sample(step, 5, 10, 10)
        if use_augment:
            task = augment(task, np.random.default_rng([seed, step]), p_class=0.5, max_shift=2)
        train_step(model, optimizer, [Episode.from_subdataset(task, model)])
        schedule.step()
    return model.eval()


@contextlib.contextmanager
def foreign_sketch(model: PudNet, other_support: torch.Tensor, other_labels: torch.Tensor, k: int):
    """Make the dataset encoder describe another sub-dataset; BN statistics and the head stay this one's."""
    with torch.no_grad():
        fixed = model.encoder(model.encoder.embed(other_support), other_labels, k)
    model.encoder.forward = lambda *args: fixed
    try:
        yield
    finally:
        del model.encoder.forward


def accuracies(model: PudNet, tasks, shuffled_sketch: bool = False) -> np.ndarray:
    evaluator, out = Evaluator(model), []
    for i, task in enumerate(tasks):
        (sx, sy), _, (tx, ty) = evaluator.tensors(task)
        context = contextlib.nullcontext()
        if shuffled_sketch:
            (ox, oy), _, _ = evaluator.tensors(tasks[(i + 1) % len(tasks)])
            context = foreign_sketch(model, ox, oy, task.num_classes)
        with context, torch.no_grad():
            out.append(evaluator.accuracy(model(sx, sy, task.num_classes), tx, ty))
    return np.array(out)


def row(name: str, acc: dict[str, np.ndarray], base: dict[str, np.ndarray] | None, seconds: float) -> str:
    cells = []
    for setting, a in acc.items():
        cell = f"{100 * a.mean():.1f} ± {100 * 1.96 * a.std(ddof=1) / np.sqrt(len(a)):.1f}"
        if base is not None:
            d = a - base[setting]
            cell += f" ({100 * d.mean():+.1f} ± {100 * 1.96 * d.std(ddof=1) / np.sqrt(len(d)):.1f})"
        cells.append(cell)
    return f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--tasks", type=int, default=50, help="unseen sub-datasets per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the table here (Markdown)")
    args = parser.parse_args()
    bank, missing = load_class_bank(SOURCES, 32, 1000)
    split = split_classes(bank.class_names, ["fashion_mnist"], 0.2, 5, seed=0)
    train = SubDatasetSampler(bank, split.meta_train, seed=args.seed)
    settings = {"intra": SubDatasetSampler(bank, split.intra_test, seed=args.seed + 1),
                "inter": SubDatasetSampler(bank, split.inter_test, seed=args.seed + 1, within_source=True)}
    tasks = {s: [sampler.sample(i, 5, 10, 10, 10) for i in range(args.tasks)] for s, sampler in settings.items()}
    lines = [f"{args.steps} meta-training steps (1 five-way 10-shot task each), seed {args.seed}, {args.tasks} unseen "
             f"tasks per setting; {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"missing sources: {sorted(missing) or 'none'}", "",
             "PudNet prediction, test accuracy % ± 95% interval (paired difference to the default in brackets).", "",
             "| variant | intra-dataset (held-out classes) | inter-dataset (Fashion-MNIST) | train s |", "|---|---|---|---|"]
    base, default_model = None, None
    for name, (overrides, use_augment) in VARIANTS.items():
        start = time.perf_counter()
        model = meta_train(dataclasses.replace(PudNetConfig(), **overrides), train, args.steps, use_augment, args.seed)
        acc = {s: accuracies(model, t) for s, t in tasks.items()}
        lines.append(row(name, acc, base, time.perf_counter() - start))
        print(lines[-1], flush=True)
        if base is None:
            base, default_model = acc, model
    acc = {s: accuracies(default_model, t, shuffled_sketch=True) for s, t in tasks.items()}
    lines.append(row("default, sketch of another sub-dataset", acc, base, 0))
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("# PudNet ablations: `python bench/ablations.py`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
