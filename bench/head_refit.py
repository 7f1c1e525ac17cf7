"""Is the ridge head limited by anything but the body (issue 9)? Refit it on augmented support images, or on
transformed features, of the same generated body.

    OMP_NUM_THREADS=1 python bench/head_refit.py RUN/checkpoint_... --out bench/results_head_refit.md

The prediction at inter S=100 is within a point of what Adam reaches in 150 epochs (``results_ratio_long_adam.md``),
and the time ratio of issue 9 needs about half a point more at about the same cost. On the tasks of
``jobs/evaluate.py``'s whole-dataset protocol (same seed, so the README's tasks), the generated body and its
BatchNorm statistics are kept, and only the ridge head (meta-trained lambda and scale) is refitted:

- on more rows, the usual way to get more out of few images: the support features plus those of the mirrored
  support set, or of 1, 2 or 4 copies shifted by up to 2 pixels (edge-filled, as the training stream's
  ``augment_shift``; one seeded offset per copy). Each copy costs one more pass of the target over the support
  images;
- on transformed features, support and test alike, the few-shot literature's free gains on pooled ReLU features:
  the element-wise square root (the power transform of Hu et al. 2021, PT-MAP, arXiv 2006.03806) and L2
  normalisation of each image's feature vector. The lambda is relative to the features' spread, so it carries
  over; the best lambda on the test images (an oracle on ``head_lambda``'s grid) is given beside each.

Test accuracy is read on the whole test split. Writes Markdown to ``--out`` and the numbers to its ``.json`` twin.
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

from bench.head_lambda import GRID, ridge_model_and_tasks  # noqa: E402
from pudnet.evaluation.whole import shots_label  # noqa: E402
from pudnet.model.heads import HeadMoments  # noqa: E402

MAX_SHIFT = 2
COPIES = (1, 2, 4)
TRANSFORMS = {                                   # pooled ReLU features are >= 0, so the square root is defined
    "sqrt": lambda f: f.clamp_min(0).sqrt(),
    "l2": lambda f: f / f.norm(dim=1, keepdim=True).clamp_min(1e-12),
}
TRANSFORM_LABELS = {"sqrt": "square-root features", "l2": "L2-normalised features"}


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
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_head_refit.md"))
    args = parser.parse_args(argv)
    command = " ".join(["python bench/head_refit.py", *(sys.argv[1:] if argv is None else argv)])
    record, evaluator, tasks = ridge_model_and_tasks(parser, args.checkpoint, args.shots, None, args.seed)
    model = record.model
    offsets = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (max(COPIES), 2),
                            generator=torch.Generator().manual_seed(args.seed)).tolist()   # (dy, dx) per copy
    rows = []
    for (name, shots), (task, _) in tasks.items():
        (sx, sy), _, (tx, ty) = evaluator.tensors(task)
        with torch.no_grad():
            weights = model(sx, sy, task.num_classes)
            support, test = evaluator.features(weights, sx), evaluator.features(weights, tx)

            def moments_of(blocks: list[torch.Tensor]) -> HeadMoments:
                """The ridge head's moments of these blocks of support features (labels ``sy`` each): once per
                feature set, whatever the lambdas it is solved for."""
                moments = HeadMoments(test.shape[1], task.num_classes, test.device)
                for block in blocks:
                    moments.add(block, sy)
                return moments

            def accuracy(moments: HeadMoments, scored: torch.Tensor, log_lambda: torch.Tensor) -> float:
                """Test accuracy of the ridge head solved from ``moments`` at ``log_lambda``, on test features."""
                w, b = moments.ridge(log_lambda, model.log_scale.exp(), scored.dtype)
                return float(((scored @ w.t() + b).argmax(1) == ty).float().mean())

            def augmented(*views: torch.Tensor) -> float:
                blocks = [support, *(evaluator.features(weights, v) for v in views)]
                return accuracy(moments_of(blocks), test, model.log_lambda)

            row = {"task": name, "shots": shots_label(shots), "support_images": len(sy),
                   "pudnet": evaluator.accuracy(weights, tx, ty), "refit": augmented(),
                   "mirrored": augmented(sx.flip(-1)),
                   **{f"shifted_{n}": augmented(*(shifted(sx, dy, dx) for dy, dx in offsets[:n])) for n in COPIES}}
            for key, transform in TRANSFORMS.items():
                moments, scored = moments_of([transform(support)]), transform(test)
                row[key] = accuracy(moments, scored, model.log_lambda)
                row[f"{key}_oracle"] = max(accuracy(moments, scored, torch.tensor(g)) for g in GRID)
        rows.append(row)
        print(f"[head_refit] {json.dumps(row)}", flush=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "checkpoint": record.path,
                                                         "offsets": offsets, "rows": rows}, indent=1))
    args.out.write_text(table(rows, command, record.path, offsets))
    print(args.out.read_text())
    return {"rows": rows}


def table(rows: list[dict], command: str, checkpoint: str, offsets: list[list[int]]) -> str:
    pct = lambda a: f"{100 * a:.1f}"
    about = (f"Checkpoint: `{checkpoint}`. Test accuracy (%) on the whole-dataset protocol's tasks. Every column but "
             "the first refits only the ridge head on the same generated body, at the meta-trained lambda except "
             "the oracle columns (the best lambda on the test images, log-lambda -6 to 4 by 0.5); the shifted "
             f"copies move the support set by the seeded offsets {offsets} (dy, dx), in that order.")
    columns = ["refit on the support set", "+ mirrored copy",
               *(f"+ {n} shifted {'copy' if n == 1 else 'copies'}" for n in COPIES),
               *(f"{label}{oracle}" for label in TRANSFORM_LABELS.values() for oracle in ("", " (oracle lambda)"))]
    keys = ["refit", "mirrored", *(f"shifted_{n}" for n in COPIES),
            *(f"{key}{oracle}" for key in TRANSFORMS for oracle in ("", "_oracle"))]
    lines = ["# Is the ridge head limited by anything but the body? (issue 9)", "", f"`{command}`", "",
             *textwrap.wrap(about, 115, break_long_words=False, break_on_hyphens=False), "",
             "| task | S | PudNet prediction | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['shots']} ({r['support_images']} images) | {pct(r['pudnet'])} | "
                     + " | ".join(pct(r[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
