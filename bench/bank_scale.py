"""Does a bigger class bank transfer better (issue 10)? Meta-train the training job's own recipe, same steps,
seed 0, on three nested class sets (or with ``--runs`` the six default sources plus one bank source at a time),
then evaluate every model on the same held-out classes.

    python bench/bank_scale.py                     # 600 steps per run, 3 runs + evaluation: 57 min on 2 cores at load 13-24
    python bench/bank_scale.py --steps 20 --tasks 5 --out /tmp/t.md    # a quick look that the pipeline runs
    python bench/bank_scale.py --seed 1 --mid 0 --no-adam --out ...     # another seed, the two end points only
    python bench/bank_scale.py --mid 0 --no-adam --set within_source=0.5 --out ...   # a recipe variant, every run
    python bench/bank_scale.py --no-adam --runs six icons glyphs --out ...   # which bank sources carry transfer

One class split serves every run: the training job's own (``jobs/train.py training_data``: split groups,
``pudnet.data.bank.split_classes_by_group``) over its default sources, the 6 base sources plus the class bank
(``pudnet.data.sources.BANK_SOURCES``), all required here; Fashion-MNIST left out whole. The runs meta-train on
subsets of its meta-train classes: the default sources' only; those plus a seeded sample of bank classes (``--mid``
in all); all of them. So every model is scored on identical held-out sets:

- intra (default sources): the held-out classes of the 6 default sources, the setting today's tables report;
- intra (all): every held-out class, bank classes included;
- inter: Fashion-MNIST.

Protocols: 5-way 10-shot sub-datasets (``--tasks`` per setting) and the whole-dataset protocol (``pudnet.evaluation.whole``,
S = 10 and 100). Baselines that do not depend on the meta-trained weights (nearest class mean on pixels,
random net + class-mean head, random init) are run with every model; the costly ones (random net + ridge head;
Adam from scratch, in the whole-dataset protocol only) with the first model only: their tasks and seeds are the
same for every run.
Writes Markdown to ``--out``, the numbers to its ``.json`` twin and inter accuracy against class count to ``--plot``
(with ``--runs`` of bank sources: each run's inter gain over the six default sources, as bars).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # a checkout that is not pip-installed

from jobs import evaluate  # noqa: E402
from jobs.connect import ray_cluster  # noqa: E402
from jobs.train import fit, load_config, training_data  # noqa: E402
from pudnet.data.sources import BANK_SOURCES, BASE_SOURCES, DEFAULT_SOURCES  # noqa: E402
from pudnet.evaluation.episodes import METHOD_LABELS, Evaluator  # noqa: E402
from pudnet.data.shards import Catalog  # noqa: E402
from pudnet.data.tasks import class_source  # noqa: E402

EVERY_MODEL = ("random_init", "ncm_pixels", "random_prototype", "pudnet")
FIRST_MODEL_ONLY = ("linear_probe",)     # and Adam from scratch in the whole-dataset protocol (about 40 s per
WHOLE_ONLY = ("sgd_converged",)          # 5-way task here: too slow for every sub-dataset of three settings)
WHOLE_SHOTS = (10, 100)


SIX = "6 default sources"                    # the run of the six default sources alone: its name
PLUS = f"{SIX} + "                           # a --runs run of one bank source: its name's prefix
RUN_KEYS = ("six", "full", *BANK_SOURCES)   # --runs: the six default sources, the full bank, or six plus one source


def tiers(classes: list[str], mid: int, seed: int) -> dict[str, list[str]]:
    """{run name: its meta-train classes}: the default sources' classes, plus a seeded sample of bank classes
    up to ``mid`` in all (no such run if ``mid`` is 0), then every class; each set contains the one before."""
    default = [c for c in classes if class_source(c) in BASE_SOURCES]
    bank = sorted(set(classes) - set(default))
    extra = np.random.default_rng(seed).choice(bank, max(0, min(mid - len(default), len(bank))), replace=False)
    middle = {f"default + {len(extra)} bank classes": default + sorted(extra.tolist())} if mid else {}
    return {SIX: default, **middle, "full bank": list(classes)}


def runs_to_fit(classes: list[str], args: argparse.Namespace) -> dict[str, list[str]]:
    """The runs this command meta-trains: :func:`tiers`, with ``--full-only`` the full bank alone, or with
    ``--runs`` the named ones (:data:`RUN_KEYS`)."""
    runs = tiers(classes, args.mid, args.seed)
    if args.runs:
        six = runs[SIX]
        named = {"six": (SIX, six), "full": ("full bank", runs["full bank"]),
                 **{s: (f"{PLUS}{s}", six + [c for c in classes if class_source(c) == s]) for s in BANK_SOURCES}}
        empty = [key for key in args.runs if key in BANK_SOURCES and len(named[key][1]) == len(six)]
        if empty:
            raise ValueError(f"--runs {' '.join(empty)}: no meta-train classes from that source")
        return dict(named[key] for key in args.runs)
    return {"full bank": runs["full bank"]} if args.full_only else runs


def evaluate_run(path: str, args: argparse.Namespace, first: bool) -> dict:
    """The three held-out settings, both protocols, for one run's checkpoint."""
    methods = EVERY_MODEL + (FIRST_MODEL_ONLY if first else ())
    adam = WHOLE_ONLY if first and not args.no_adam else ()
    cfg = evaluate.EvalConfig(checkpoint=path, tasks=args.tasks, methods=methods, seed=args.seed,
                              whole=evaluate.WholeSettings(shots=WHOLE_SHOTS, methods=tuple(
                                  m for m in methods + adam if m != "random_init")))
    record = evaluate.load(cfg, smoke=False)
    catalog = Catalog(record.roots)
    split = record.split
    default_intra = tuple(c for c in split.intra_test if class_source(c) in BASE_SOURCES)
    evaluator = Evaluator(record.model, cfg.sgd, cfg.seed, cfg.max_stats_images)
    out = {"checkpoint": record.path, "intra_classes": {"default": len(default_intra), "all": len(split.intra_test)}}
    settings = evaluate.tasks_protocol(cfg, record, catalog, evaluator)
    out["tasks"] = {"intra (default sources)": settings["intra: base sources"], "inter": settings["inter"],
                    "intra (all)": settings["intra"]}
    record.split = dataclasses.replace(split, intra_test=default_intra)
    out["whole"] = evaluate.whole_protocol(cfg, record)
    return out


def cell(report: dict, method: str) -> str:
    r = report["methods"].get(method)
    return f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}" if r else ""


def table(rows: list[dict], command: str, base: dict) -> str:
    settings = ("intra (default sources)", "intra (all)", "inter")
    lines = [f"### `{command}`", "", f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} CPU cores shared, load "
             f"average {os.getloadavg()[0]:.1f}; seed {rows[0]['seed']}, {rows[0]['steps']} steps per run", "",
             f"Held-out classes: {rows[0]['intra_classes']['default']} of the default sources, "
             f"{rows[0]['intra_classes']['all']} in all; inter = Fashion-MNIST (10 classes), left out whole.", "",
             "**5-way 10-shot sub-datasets**, test accuracy % ± 95% interval "
             f"({rows[0]['tasks']['inter']['methods']['pudnet']['tasks']} tasks per setting; the same tasks for "
             "every run)", "",
             "| meta-train classes | run | train wall | " + " | ".join(
                 f"{s}: PudNet | {s}: random net + class-mean" for s in settings) + " |",
             "|" + "---|" * (3 + 2 * len(settings))]
    for r in rows:
        lines.append(f"| {r['classes']} | {r['name']} | {r['train_s'] / 60:.1f} min | " + " | ".join(
            f"{cell(r['tasks'][s], 'pudnet')} | {cell(r['tasks'][s], 'random_prototype')}" for s in settings) + " |")
    lines += ["", "Baselines on the same tasks (they do not use the meta-trained weights; run with the first model):",
              "", "| method | " + " | ".join(settings) + " |", "|" + "---|" * (1 + len(settings))]
    for m in ("random_init", "ncm_pixels", "linear_probe"):
        lines.append(f"| {METHOD_LABELS[m]} | " + " | ".join(cell(base["tasks"][s], m) for s in settings) + " |")
    tasks = list(rows[0]["whole"])
    lines += ["", "**Whole-dataset protocol** (`pudnet.evaluation.whole`): one task of all a dataset's classes, S train images "
              "per class, the whole test split scored; test accuracy %", "",
              "| meta-train classes | run | " + " | ".join(f"{t} S={s}: PudNet | random net + class-mean"
                                                    for t in tasks for s in WHOLE_SHOTS) + " |",
              "|" + "---|" * (2 + 2 * len(tasks) * len(WHOLE_SHOTS))]
    acc = lambda r, t, s, m: (f"{100 * r['whole'][t]['shots'][str(s)]['methods'][m]['accuracy']:.1f}"
                              if m in r["whole"][t]["shots"][str(s)]["methods"] else "")
    for r in rows:
        lines.append(f"| {r['classes']} | {r['name']} | " + " | ".join(f"{acc(r, t, s, 'pudnet')} | {acc(r, t, s, 'random_prototype')}"
                                                        for t in tasks for s in WHOLE_SHOTS) + " |")
    lines += ["", "Whole-dataset baselines (first model's evaluation):", "",
              "| method | " + " | ".join(f"{t} S={s}" for t in tasks for s in WHOLE_SHOTS) + " |",
              "|" + "---|" * (1 + len(tasks) * len(WHOLE_SHOTS))]
    for m in ("ncm_pixels", "linear_probe", "sgd_converged"):
        lines.append(f"| {METHOD_LABELS[m]} | " + " | ".join(acc(base, t, s, m) for t in tasks for s in WHOLE_SHOTS) + " |")
    return "\n".join(lines) + "\n"


def inter_accuracies(run: dict, method: str = "pudnet") -> dict[str, float]:
    """{protocol: inter (Fashion-MNIST) test accuracy %} of one run."""
    whole = run["whole"]["inter: fashion_mnist"]["shots"]
    return {"5-way 10-shot tasks": 100 * run["tasks"]["inter"]["methods"][method]["accuracy"],
            **{f"whole dataset, S={s}": 100 * whole[str(s)]["methods"][method]["accuracy"] for s in WHOLE_SHOTS}}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if any(r["name"].startswith(PLUS) for r in rows):      # --runs with bank sources: not a curve over class counts
        return plot_against_six(rows, path, plt)
    x = [r["classes"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in inter_accuracies(rows[0]):
        line, = ax.plot(x, [inter_accuracies(r)[label] for r in rows], "o-", label=f"PudNet, {label}")
        ax.plot(x, [inter_accuracies(r, "random_prototype")[label] for r in rows], "x--", color=line.get_color(),
                label=f"random net + class mean, {label}")
    ax.set_xscale("log")
    ax.set_xlabel("meta-train classes")
    ax.set_ylabel("inter (Fashion-MNIST) test accuracy %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_against_six(rows: list[dict], path: Path, plt) -> None:
    """``--runs``: each run's inter accuracy minus that of the six default sources with the same seed, one bar per
    protocol (the mean over seeds; dots: each seed), or the raw accuracy if no six-source run is given."""
    six = {r["seed"]: inter_accuracies(r) for r in rows if r["name"] == SIX}
    rows = [r for r in rows if not six or r["seed"] in six]           # a gain needs its seed's six-source run
    names = list(dict.fromkeys(r["name"] for r in rows if r["name"] != SIX))
    protocols = list(inter_accuracies(rows[0]))
    height = 0.8 / len(protocols)
    fig, ax = plt.subplots(figsize=(9, 0.7 + 0.6 * len(names)))
    for j, protocol in enumerate(protocols):
        for i, name in enumerate(names):
            values = [inter_accuracies(r)[protocol] - (six[r["seed"]][protocol] if six else 0)
                      for r in rows if r["name"] == name]
            ax.barh(i + j * height, float(np.mean(values)), height, color=f"C{j}", label=None if i else protocol)
            if len(values) > 1:
                ax.plot(values, [i + j * height] * len(values), "k.", markersize=3)
    counts = {name: "/".join(str(r["classes"]) for r in rows if r["name"] == name) for name in names}
    ax.set_yticks([i + height for i in range(len(names))], [f"{n} ({counts[n]})" for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("Fashion-MNIST (inter) " + ("gain over the six default sources, points" if six else "accuracy %"))
    seeds = sorted({r["seed"] for r in rows})
    ax.set_title(f"seed {', '.join(map(str, seeds))}, {rows[0]['steps']} steps per run; meta-train classes in "
                 "brackets" + ("; bars: mean, dots: each seed" if len(seeds) > 1 else ""), fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))   # outside: bars reach both edges
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per run (TrainConfig.steps)")
    parser.add_argument("--mid", type=int, default=300, help="meta-train classes of the middle run (0: no middle run)")
    parser.add_argument("--no-adam", action="store_true", help="skip Adam from scratch (the slowest baseline)")
    parser.add_argument("--tasks", type=int, default=50, help="5-way sub-datasets per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="", help="run directories (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_bank_scale.md"))
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("results_bank_scale.png"))
    parser.add_argument("--report-only", action="store_true", help="redraw --out and --plot from --out's .json")
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig key=value for every run (the same recipe)")
    parser.add_argument("--full-only", action="store_true", help="meta-train the full bank only (a recipe variant "
                        "against an earlier table's end points)")
    parser.add_argument("--runs", nargs="+", default=[], choices=RUN_KEYS, metavar="RUN", help="meta-train these "
                        f"runs instead: six, full, or a bank source (the six default sources plus it): {', '.join(RUN_KEYS)}"
                        " (--mid and --full-only do not apply)")
    args = parser.parse_args(argv)
    if args.runs and args.full_only:
        parser.error("--runs names every run: drop --full-only")
    command = " ".join(["python bench/bank_scale.py", *(sys.argv[1:] if argv is None else argv)])
    numbers = args.out.with_suffix(".json")
    if args.report_only:
        saved = json.loads(numbers.read_text())
        return report(saved["runs"], saved["command"], args)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(overrides=[f"sources={','.join(DEFAULT_SOURCES)}", f"steps={args.steps}",
                                     f"seed={args.seed}", f"split_seed={args.seed}", "eval_tasks=0",
                                     f"checkpoint_every={args.steps}", f"storage_path={args.work or tmp}",
                                     *args.set])
        runs = []
        with ray_cluster() as where:
            print(f"ray cluster: {where}", flush=True)
            cfg, roots, split, classes = training_data(cfg)
            for name, subset in runs_to_fit(classes, args).items():
                start = time.perf_counter()
                folder = "bank-scale-" + "".join(ch if ch.isalnum() else "-" for ch in name)   # never another run's
                result = fit(dataclasses.replace(cfg, name=folder), roots, split, subset)
                runs.append({"name": name, "classes": len(subset), "steps": args.steps, "seed": args.seed,
                             "train_s": time.perf_counter() - start, "path": result.checkpoint.path})
                print(f"[bank_scale] {name}: {len(subset)} classes, {runs[-1]['train_s']:.0f} s", flush=True)
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run.update(evaluate_run(run.pop("path"), args, first=i == 0))
            run["eval_s"] = time.perf_counter() - start
            numbers.write_text(json.dumps({"command": command, "runs": runs[:i + 1]}, indent=1))
    return report(runs, command, args)


def report(runs: list[dict], command: str, args: argparse.Namespace) -> list[dict]:
    text = table(runs, command, runs[0])
    print(text)
    args.out.write_text("# Class count and transfer: bench/bank_scale.py\n\nSee the script's docstring for what is "
                        "measured.\n\n" + text)
    plot(runs, args.plot)
    print(f"wrote {args.out}, {args.out.with_suffix('.json')}, {args.plot}")
    return runs

if __name__ == "__main__":
    main()
