"""Does the ridge head gain from augmented copies of the support images (issue 9)? Refit it on more rows.

    OMP_NUM_THREADS=1 python bench/head_augment.py RUN/checkpoint_... --out bench/results_head_augment.md

The prediction at inter S=100 is within a point of what Adam reaches in 150 epochs (``results_ratio_long_adam.md``),
and the time ratio of issue 9 needs about half a point more at about the same cost. Augmenting the support set is
the usual way to get more out of few images, and the ridge head reads every row it is given. So on the tasks of
``jobs/evaluate.py``'s whole-dataset protocol (same seed, so the README's tasks), the generated body and its
BatchNorm statistics are kept, and only the ridge head (meta-trained lambda and scale) is refitted on the support
features plus those of 1, 2 or 4 copies of the support set shifted by up to 2 pixels (edge-filled, as the
training stream's ``augment_shift``; one seeded offset per copy), or of the mirrored support set. Each copy costs
one more pass of the target over the support images. Test accuracy is read on the whole test split.
Writes Markdown to ``--out`` and the numbers to its ``.json`` twin.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # a checkout that is not pip-installed

from jobs import evaluate  # noqa: E402
from pudnet.evaluation.episodes import Evaluator  # noqa: E402
from pudnet.evaluation.whole import read_whole_tasks, shots_label  # noqa: E402
from pudnet.model.heads import HeadMoments  # noqa: E402

MAX_SHIFT = 2
COPIES = (1, 2, 4)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(N, 3, R, R) images moved by (dy, dx) pixels, the uncovered border filled with the edge."""
    r, p = x.shape[-1], MAX_SHIFT
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    return padded[:, :, p + dy:p + dy + r, p + dx:p + dx + r]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory written by jobs/train.py")
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 100, 0], help="S per class (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_head_augment.md"))
    args = parser.parse_args(argv)
    command = " ".join(["python bench/head_augment.py", *(sys.argv[1:] if argv is None else argv)])
    cfg = evaluate.EvalConfig(checkpoint=args.checkpoint, seed=args.seed)
    record = evaluate.load(cfg, smoke=False)
    model = record.model
    if model.cfg.head != "ridge":
        parser.error(f"{record.path} has the {model.cfg.head!r} head: this benchmark refits the ridge head")
    evaluator = Evaluator(model, cfg.whole.sgd, cfg.seed, cfg.max_stats_images)
    tasks = read_whole_tasks(record.roots, record.split, tuple(args.shots), cfg.whole.classes, model.cfg.max_classes,
                             args.seed, cfg.whole.max_per_class or None, cfg.whole.val_fraction)
    offsets = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (max(COPIES), 2),
                            generator=torch.Generator().manual_seed(args.seed)).tolist()   # (dy, dx) per copy
    rows = []
    for (name, shots), (task, _) in tasks.items():
        (sx, sy), _, (tx, ty) = evaluator.tensors(task)
        with torch.no_grad():
            weights = model(sx, sy, task.num_classes)
            test = evaluator.features(weights, tx)

            def refit(*views: torch.Tensor) -> float:
                """Test accuracy of the ridge head fitted on the features of these views of the support set."""
                moments = HeadMoments(test.shape[1], task.num_classes, test.device)
                for view in views:
                    moments.add(evaluator.features(weights, view), sy)
                w, b = moments.ridge(model.log_lambda, model.log_scale.exp(), test.dtype)
                return float(((test @ w.t() + b).argmax(1) == ty).float().mean())

            row = {"task": name, "shots": shots_label(shots), "support_images": len(sy),
                   "pudnet": evaluator.accuracy(weights, tx, ty), "refit": refit(sx),
                   "mirrored": refit(sx, sx.flip(-1)),
                   **{f"shifted_{n}": refit(sx, *(shifted(sx, dy, dx) for dy, dx in offsets[:n])) for n in COPIES}}
        rows.append(row)
        print(f"[head_augment] {json.dumps(row)}", flush=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "checkpoint": record.path,
                                                         "offsets": offsets, "rows": rows}, indent=1))
    args.out.write_text(table(rows, command, record.path, offsets))
    print(args.out.read_text())
    return {"rows": rows}


def table(rows: list[dict], command: str, checkpoint: str, offsets: list[list[int]]) -> str:
    pct = lambda a: f"{100 * a:.1f}"
    about = (f"Checkpoint: `{checkpoint}`. Test accuracy (%) on the whole-dataset protocol's tasks. Every column but "
             "the first refits only the ridge head (meta-trained lambda) on the same generated body; the shifted "
             f"copies move the support set by the seeded offsets {offsets} (dy, dx), in that order.")
    lines = ["# Does the ridge head gain from augmented support images? (issue 9)", "", f"`{command}`", "",
             *textwrap.wrap(about, 115, break_long_words=False, break_on_hyphens=False), "",
             "| task | S | PudNet prediction | refit on the support set | + mirrored copy | "
             + " | ".join(f"+ {n} shifted {'copy' if n == 1 else 'copies'}" for n in COPIES) + " |",
             "|---|---|---|---|---|" + "---|" * len(COPIES)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['shots']} ({r['support_images']} images) | {pct(r['pudnet'])} | "
                     f"{pct(r['refit'])} | {pct(r['mirrored'])} | "
                     + " | ".join(pct(r[f"shifted_{n}"]) for n in COPIES) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
