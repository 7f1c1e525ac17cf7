"""Which classifier head uses more data: meta-train PudNet in-process (no Ray) per variant, then score
whole datasets, one command.

    python bench/heads.py --out bench/results_heads.md                    # ~30 min on 2 CPU cores
    python bench/heads.py --steps 20 --variants ridge --shots 10          # a quick check of the script

Each variant is meta-trained with the same seed and steps on the training job's meta-train classes, from
its shards and class split (``jobs.train.training_data`` with the default TrainConfig: Fashion-MNIST left out;
shards are written on first use), then scored on ``jobs/evaluate.py``'s whole-dataset tasks
(``pudnet.evaluation.whole``): every class of the left-out Fashion-MNIST (10-way, inter), and 10 seeded held-out
classes of the meta-training sources (intra). S support images per class; the whole test split is scored. Each trained model is also
scored with the other head swapped in on the same generated body ("as ridge", "as prototype"), which
separates what the head does from what meta-training with it does. Baselines on the same support
images: nearest class mean on pixels, and a random network with a class-mean head.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import numpy as np
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.data.augment import Augmentation
from jobs.train import load_config, training_data
from pudnet.data.shards import read_class_bank
from pudnet.data.sources import BASE_SOURCES
from pudnet.data.tasks import SubDatasetSampler, task_shape
from pudnet.evaluation.episodes import Evaluator
from pudnet.evaluation.whole import read_whole_tasks
from pudnet.model.meta import Episode, train_step

VARIANTS = {  # name -> (PudNetConfig overrides, (ways range, shots range) or None for fixed 5-way 10-shot)
    "prototype": ({"head": "prototype"}, None),
    "ridge": ({"head": "ridge"}, None),
    "ridge+varied": ({"head": "ridge"}, ((2, 20), (1, 200))),
    "prototype+varied": ({"head": "prototype"}, ((2, 20), (1, 200))),
}
MAX_SUPPORT = 600    # K*S cap of a meta-training task (pudnet.data.tasks.task_shape)


def meta_train(cfg: PudNetConfig, sampler: SubDatasetSampler, steps: int, varied, seed: int) -> PudNet:
    """The recipe of bench/ablations.py (AdamW, one-cycle 1e-3, task augmentation), K and S fixed or varied."""
    torch.manual_seed(seed)
    model = PudNet(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    for step in range(steps):
        k, s = (5, 10) if varied is None else task_shape(seed, step, *varied, MAX_SUPPORT)
        task = Augmentation(p_class=0.5, max_shift=2).apply(
            sampler.sample(step, k, s, 10), np.random.default_rng([seed, step]))
        train_step(model, optimizer, [Episode.from_subdataset(task, model)])
        schedule.step()
    return model.eval()


def with_head(model: PudNet, head: str) -> PudNet:
    """The same hypernetwork with another head (its parameters at their initial values)."""
    if head == model.cfg.head:
        return model
    other = PudNet(dataclasses.replace(model.cfg, head=head))
    other.load_state_dict(model.state_dict(), strict=False)
    return other.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--shots", default="10,100")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the Markdown table here")
    args = parser.parse_args()
    job = load_config(overrides=[f"sources={','.join(BASE_SOURCES)}"])  # the six, as the results were measured
    _, roots, split, classes = training_data(job)
    tasks = read_whole_tasks(roots, split, tuple(int(s) for s in args.shots.split(",")), 10, job.model.max_classes,
                             args.seed, job.max_per_class)
    train = SubDatasetSampler(read_class_bank(roots, classes, "train", job.max_per_class), classes, seed=args.seed,
                              test_fraction=0.0)
    rows, base = [], None
    for name in args.variants.split(","):
        overrides, varied = VARIANTS[name]
        start = time.perf_counter()
        model = meta_train(PudNetConfig(**overrides), train, args.steps, varied, args.seed)
        train_s = time.perf_counter() - start
        for head in ("ridge", "prototype"):
            evaluator = Evaluator(with_head(model, head), seed=args.seed)
            methods = ("pudnet",) if base is not None else ("pudnet", "ncm_pixels", "random_prototype")
            scores = {key: evaluator.run(task, 0, methods, rows).scores for key, (task, rows) in tasks.items()}
            if base is None:
                base = {m: {key: s[m][0] for key, s in scores.items()} for m in ("ncm_pixels", "random_prototype")}
            label = name if head == model.cfg.head else f"{name} (as {head})"
            rows.append((label, {key: s["pudnet"][0] for key, s in scores.items()}, train_s))
            print(rows[-1], flush=True)
    keys = list(tasks)
    described = ", ".join(f"{s} K={tasks[(s, n)][0].num_classes} S={n} test={len(tasks[(s, n)][0].test_y)}"
                          for s, n in keys)
    lines = [f"Whole-dataset accuracy (%), seed {args.seed}, {args.steps} meta-training steps per variant, "
             f"default convnet target, {platform.machine()} CPU x {torch.get_num_threads()} threads. "
             f"Tasks: {described}.",
             "", "| method | " + " | ".join(f"{s} S={n}" for s, n in keys) + " | meta-train s |",
             "|---|" + "---|" * (len(keys) + 1)]
    for label, accs in (("nearest class mean, pixels", base["ncm_pixels"]),
                        ("random net + class-mean head", base["random_prototype"])):
        lines.append(f"| {label} | " + " | ".join(f"{100 * accs[k]:.1f}" for k in keys) + " | - |")
    for label, accs, seconds in rows:
        lines.append(f"| {label} | " + " | ".join(f"{100 * accs[k]:.1f}" for k in keys) + f" | {seconds:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        command = " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out" and v is not None)
        with open(args.out, "w") as f:
            f.write(f"# Heads\n\n`python bench/heads.py {command}`\n\n{text}")


if __name__ == "__main__":
    main()
