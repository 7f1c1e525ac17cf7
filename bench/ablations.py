"""Ablations of PudNet's design choices, meta-trained with the training job's own recipe, scored on whole datasets.

    python bench/ablations.py --steps 300 --out bench/results_ablations.md
    python bench/ablations.py --steps 5 --shots 10 --variants "default;conditioning" --no-adam      # a quick check of the script

Every variant is ``jobs/train.py``'s TrainConfig on the six base sources (its defaults otherwise, then ``--set key=value`` for all variants,
then the variant's own overrides) meta-trained in one process by ``pudnet.model.recipe.meta_train_local``: the
job's optimiser, schedule, task shapes and augmentation, from the job's shards, class split and meta-train
classes (``jobs.train.training_data``; shards are written on first use). All variants share the seed, so the
differences are paired. Each is scored on ``jobs/evaluate.py``'s whole-dataset tasks
(``pudnet.evaluation.whole``): every class of the left-out Fashion-MNIST (inter) and 10 seeded held-out
classes of the meta-training sources (intra), S support images per class, the whole test split.

The conditioning ablation: the prediction for one dataset while the body is generated from ANOTHER dataset
(MNIST for the inter task, Fashion-MNIST for the intra one, same S): its sketch ("foreign sketch") or its
sketch and its support images ("foreign sketch + support data": the activations the conditioning reads, and
the images the refinement steps on). BatchNorm statistics and the head still come from the true support set,
so the drop is what the data-dependent body is worth. The last row ("... + BatchNorm statistics") takes the
statistics from the other dataset too: the true support set then only fits the head, so its drop is what the
whole dependence of the body on the data is worth, the support statistics included.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from jobs.train import load_config, training_data
from pudnet.model.conditioning import foreign_conditioning
from pudnet.data.shards import Catalog, read_class_bank
from pudnet.data.sources import BASE_SOURCES
from pudnet.data.tasks import SubDatasetSampler
from pudnet.evaluation.episodes import METHOD_LABELS, Evaluator
from pudnet.evaluation.whole import read_whole_tasks
from pudnet.model.recipe import meta_train_local

VARIANTS = {  # name -> TrainConfig overrides on top of the defaults and --set
    "default": [],
    "conditioning": ["model.conditioning=activations"],
    "conditioning, base lr x0.1": ["model.conditioning=activations", "base_lr_scale=0.1"],
    "conditioning, no gate penalty": ["model.conditioning=activations", "model.gate_penalty=0"],
    "varied K and S": ["ways_max=10", "shots_max=100", "max_support=300"],
    "conditioning, varied K and S": ["model.conditioning=activations", "ways_max=10", "shots_max=100",
                                     "max_support=300"],
    "whitened first layer": ["model.whiten_eps=0.01"],
    "whitened first layer, floor 0.1": ["model.whiten_eps=0.1"],
    "refined body": ["model.refine_steps=1"],
    "refined body, 3 steps": ["model.refine_steps=3"],
    "refined body, 10 steps from 0.06": ["model.refine_steps=10", "model.refine_alpha_init=0.06"],
    "refined last stage, 10 steps, floor 0.06": ["model.refine_steps=10", "model.refine_layers=1",
                                                 "model.refine_alpha_init=0.06", "model.refine_alpha_min=0.06"],
    "refined last stage, 10 steps, floor 0.06, 64 per class": [
        "model.refine_steps=10", "model.refine_layers=1", "model.refine_alpha_init=0.06", "model.refine_alpha_min=0.06",
        "model.refine_per_class=64"],
    "refined last stage, 10 steps, floor 0.15": ["model.refine_steps=10", "model.refine_layers=1",
                                                 "model.refine_alpha_init=0.15", "model.refine_alpha_min=0.15"],
}
BASELINES = ("ncm_pixels", "random_prototype", "linear_probe")
ADAM = ("sgd_1epoch", "sgd_converged")


FOREIGN = (("foreign sketch", False, False), ("foreign sketch + support data", True, False),   # (row, activations,
           ("foreign sketch + support data + BatchNorm statistics", True, True))                # statistics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--shots", default="10,100")
    parser.add_argument("--variants", default=";".join(VARIANTS), help="names from VARIANTS, ;-separated")
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig key=value for every variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-adam", action="store_true", help="skip Adam from scratch (the slow rows)")
    parser.add_argument("--out", help="write the Markdown table here")
    args = parser.parse_args()
    common = [f"sources={','.join(BASE_SOURCES)}", f"steps={args.steps}", f"seed={args.seed}", *args.set]
    base = load_config(overrides=common)
    shots = tuple(int(s) for s in args.shots.split(","))
    if min(shots) < 1:
        raise ValueError(f"--shots {args.shots}: finite S only (the foreign support set has the same S)")
    _, roots, split, classes = training_data(base)
    read = lambda names: read_class_bank(roots, names, "train", base.max_per_class)  # noqa: E731
    tasks = read_whole_tasks(roots, split, shots, 10, base.model.max_classes, args.seed, base.max_per_class)
    mnist = [c for m in Catalog(roots).manifests if m.source == "mnist" for c in m.classes]
    others = {"inter": SubDatasetSampler(read(mnist), mnist, seed=args.seed),
              "intra": SubDatasetSampler(read(split.inter_test), split.inter_test, seed=args.seed)}
    other = {key: others["intra" if key[0] == "intra" else "inter"].sample(0, 10, key[1], 1) for key in tasks}
    train = SubDatasetSampler(read(classes), classes, seed=args.seed, test_fraction=0.0)
    rows = []
    for i, name in enumerate(args.variants.split(";")):
        cfg = load_config(overrides=common + VARIANTS[name])
        start = time.perf_counter()
        model = meta_train_local(cfg, train, log_every=50)
        train_s = time.perf_counter() - start
        evaluator = Evaluator(model, seed=args.seed)
        methods = ("pudnet",) + ((BASELINES + (() if args.no_adam else ADAM)) if i == 0 else ())
        scores = {key: evaluator.run(task, 0, methods, rows).scores for key, (task, rows) in tasks.items()}
        if i == 0:
            rows += [(METHOD_LABELS[m], {key: s[m][0] for key, s in scores.items()}, None) for m in methods[1:]]
        rows.append((name, {key: s["pudnet"][0] for key, s in scores.items()}, train_s))
        print(rows[-1], flush=True)
        for label, activations, statistics in FOREIGN:
            if activations and not statistics and cfg.model.conditioning == "none" and not cfg.model.refine_steps \
                    and not cfg.model.whiten_eps:
                continue
            acc = {}
            for key, (task, _) in tasks.items():
                (ox, oy), _, _ = evaluator.tensors(other[key])
                with foreign_conditioning(model, ox, oy, other[key].num_classes, activations, statistics):
                    acc[key] = evaluator.run(task, 0, ("pudnet",)).scores["pudnet"][0]
            rows.append((f"{name}, {label}", acc, None))
            print(rows[-1], flush=True)
    keys = list(tasks)
    described = ", ".join(f"{s} K={tasks[(s, n)][0].num_classes} S={n} test={len(tasks[(s, n)][0].test_y)}"
                          for s, n in keys)
    lines = [f"Whole-dataset accuracy (%), seed {args.seed}, {args.steps} meta-training steps per variant "
             f"(jobs/train.py's TrainConfig and recipe, in-process), {platform.machine()} CPU x "
             f"{torch.get_num_threads()} threads. Tasks: {described}. Foreign data: MNIST for inter, "
             "Fashion-MNIST for intra.", "",
             "| method | " + " | ".join(f"{s} S={n}" for s, n in keys) + " | meta-train s |",
             "|---|" + "---|" * (len(keys) + 1)]
    for label, accs, seconds in rows:
        lines.append(f"| {label} | " + " | ".join(f"{100 * accs[k]:.1f}" for k in keys)
                     + f" | {'-' if seconds is None else f'{seconds:.0f}'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        command = " ".join(f"--{k.replace('_', '-')} '{v}'" for k, v in vars(args).items()
                           if k not in ("out", "set", "no_adam")) + (" --set " + " ".join(args.set) if args.set else "")
        command += " --no-adam" if args.no_adam else ""
        with open(args.out, "w") as f:
            f.write(f"# PudNet ablations\n\n`python bench/ablations.py {command}`\n\n{text}")


if __name__ == "__main__":
    main()
