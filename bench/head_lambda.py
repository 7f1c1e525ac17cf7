"""Is the ridge head what limits the prediction (issue 9)? Refit it on the same generated body with other lambdas.

    OMP_NUM_THREADS=1 python bench/head_lambda.py RUN_OR_CHECKPOINT --out bench/results_head_lambda.md

The prediction's ridge head uses one meta-trained relative lambda for every task (``PudNet.log_lambda``:
lambda = exp(log_lambda) * mean squared centred feature norm). Here, on the tasks of ``jobs/evaluate.py``'s
whole-dataset protocol (same seed, so the README's tasks), the generated body is kept and only the head is
refitted on every support image, for log_lambda on a grid:

- the meta-trained lambda (beside the prediction itself, whose head mixes train-mode features of the BatchNorm
  sample with eval-mode ones of the rest);
- the lambda generalised cross-validation picks per task: computable from the head's F x F moments in one
  eigendecomposition, so a prediction could afford it (its milliseconds are reported);
- the best lambda on the test images: an oracle no method can use, the ridge head's ceiling on this body
  (ties go to the smallest lambda).

If the oracle is close to the meta-trained lambda, no ridge lambda makes a better prediction.
Beside them, on the same tasks, the no-learning baselines and Adam from scratch (``pudnet.evaluation.episodes``).
Writes Markdown to ``--out`` and the numbers to its ``.json`` twin.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # a checkout that is not pip-installed

from jobs import evaluate  # noqa: E402
from pudnet.evaluation.episodes import METHOD_LABELS, Evaluator  # noqa: E402
from pudnet.evaluation.whole import read_whole_tasks, shots_label  # noqa: E402
from pudnet.model.heads import HeadMoments, ridge_output  # noqa: E402

BASELINES = ("ncm_pixels", "random_prototype", "linear_probe")
ADAM = ("sgd_1epoch", "sgd_converged")
GRID = np.arange(-6.0, 4.01, 0.5)          # log_lambda, relative to the features' spread


class RidgePath:
    """The ridge head of ``pudnet.model.heads`` on fixed (N, F) features at any relative log-lambda, and its GCV
    score, from one eigendecomposition of the centred scatter matrix (no further pass over the images).

    GCV(lambda) = n RSS / (n - df)^2 of the one-hot regression, where RSS = |Y_c|^2 - sum_j |z_j|^2 (d_j + 2 lambda)
    / (d_j + lambda)^2 and df = sum_j d_j / (d_j + lambda) + 1 (the unpenalised intercept); d, z: eigenvalues of
    X_c^T X_c and X_c^T Y_c in its eigenbasis. Where n - df < 1 the score is undefined (None)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int):
        moments = HeadMoments(features.shape[1], num_classes, features.device)
        moments.add(features, labels)
        n = self.n = moments.n
        self.mu, self.ybar, sxx, sxy, self.spread = moments.centred()       # as the prediction's head has them
        self.shift = moments.shift
        d, self.v = torch.linalg.eigh(sxx)
        self.d = d.clamp_min(0)
        self.z = self.v.t() @ sxy                                           # (F, K) in the eigenbasis
        self.syy = n - (moments.counts ** 2).sum() / n                      # centred one-hot sum of squares

    def head(self, log_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (K, F) and bias (K,) of ``ridge_head`` at this log-lambda, with a logit scale of 1."""
        w = self.v @ (self.z / (self.d + float(np.exp(log_lambda)) * self.spread)[:, None])
        return ridge_output(w, self.mu + self.shift, self.ybar, 1.0, torch.float32)

    def gcv(self, log_lambda: float) -> float | None:
        lam = float(np.exp(log_lambda)) * self.spread
        rss = self.syy - ((self.z ** 2).sum(1) * (self.d + 2 * lam) / (self.d + lam) ** 2).sum()
        df = float((self.d / (self.d + lam)).sum()) + 1
        return float(self.n * rss / (self.n - df) ** 2) if self.n - df >= 1 else None


def lambda_sweep(features: torch.Tensor, labels: torch.Tensor, test_features: torch.Tensor, test_labels: torch.Tensor,
                 num_classes: int, grid: np.ndarray, learned: float) -> dict:
    """Test accuracy of the ridge head refitted at the meta-trained log-lambda ``learned`` and at each of ``grid``,
    and GCV's pick among the grid (with the milliseconds it took)."""
    start = time.perf_counter()
    path = RidgePath(features, labels, num_classes)
    gcv = [path.gcv(g) for g in grid]
    gcv_ms = 1000 * (time.perf_counter() - start)

    def accuracy(log_lambda: float) -> float:
        weight, bias = path.head(log_lambda)
        return float(((test_features @ weight.t() + bias).argmax(1) == test_labels).float().mean())
    pick = min((i for i, v in enumerate(gcv) if v is not None), key=lambda i: gcv[i])
    return {"grid": grid.tolist(), "accuracy": [accuracy(g) for g in grid], "refit_learned": accuracy(learned),
            "gcv": gcv, "gcv_pick": pick, "gcv_ms": gcv_ms}


def ridge_model_and_tasks(parser: argparse.ArgumentParser, checkpoint: str, shots: list[int], classes: int | None,
                          seed: int) -> tuple[evaluate.RunRecord, Evaluator, dict]:
    """A ridge-head checkpoint (``parser.error`` for another head), its evaluator and the whole-dataset protocol's
    tasks, as ``jobs/evaluate.py`` builds them for that seed (``classes``: held-out classes of the intra task,
    None for the evaluation default)."""
    cfg = evaluate.EvalConfig(checkpoint=checkpoint, seed=seed)
    record = evaluate.load(cfg, smoke=False)
    model = record.model
    if model.cfg.head != "ridge":
        parser.error(f"{record.path} has the {model.cfg.head!r} head: this benchmark refits the ridge head")
    evaluator = Evaluator(model, cfg.whole.sgd, cfg.seed, cfg.max_stats_images)
    tasks = read_whole_tasks(record.roots, record.split, tuple(shots), classes or cfg.whole.classes,
                             model.cfg.max_classes, seed, cfg.whole.max_per_class or None, cfg.whole.val_fraction)
    return record, evaluator, tasks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint or run directory written by jobs/train.py")
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 100, 0], help="S per class (0: all)")
    parser.add_argument("--classes", type=int, default=10, help="held-out classes of the intra task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-adam", action="store_true", help="skip Adam from scratch (the slowest baseline)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_head_lambda.md"))
    args = parser.parse_args(argv)
    command = " ".join(["python bench/head_lambda.py", *(sys.argv[1:] if argv is None else argv)])
    record, evaluator, tasks = ridge_model_and_tasks(parser, args.checkpoint, args.shots, args.classes, args.seed)
    model = record.model
    learned = model.log_lambda.item()
    methods = BASELINES + (() if args.no_adam else ADAM)
    rows = []
    for (name, shots), (task, sgd_rows) in tasks.items():
        (sx, sy), _, (tx, ty) = evaluator.tensors(task)
        with torch.no_grad():
            weights = model(sx, sy, task.num_classes)
            predicted = evaluator.accuracy(weights, tx, ty)
            sweep = lambda_sweep(evaluator.features(weights, sx), sy, evaluator.features(weights, tx), ty,
                                 task.num_classes, GRID, learned)
        scores = evaluator.run(task, 0, methods, sgd_rows).scores   # index 0, as jobs/evaluate.py seeds each whole task
        rows.append({"task": name, "shots": shots_label(shots), "support_images": len(sy), "test_images": len(ty),
                     "learned_log_lambda": learned, "pudnet": predicted, **sweep,
                     "baselines": {m: scores[m][0] for m in methods}})
        print(f"[head_lambda] {name} S={shots_label(shots)}: PudNet {100 * predicted:.1f}, refit "
              f"{100 * sweep['refit_learned']:.1f}, GCV "
              f"{100 * sweep['accuracy'][sweep['gcv_pick']]:.1f}, oracle {100 * max(sweep['accuracy']):.1f}", flush=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "checkpoint": record.path,
                                                         "rows": rows}, indent=1))
    args.out.write_text(table(rows, command, record.path, methods))
    print(args.out.read_text())
    return {"rows": rows}


def table(rows: list[dict], command: str, checkpoint: str, methods: tuple[str, ...]) -> str:
    pct = lambda a: f"{100 * a:.1f}"
    lines = ["# Is the ridge head the limit? (issue 9)", "", f"`{command}`", "", f"Checkpoint: `{checkpoint}`. "
             "Test accuracy (%) on the whole-dataset protocol's tasks; every head column refits only the ridge "
             "head on the same generated body and every support image. log-lambda is relative to the mean "
             "squared centred feature norm.", "",
             "| task | S | PudNet prediction | refit, meta-trained lambda | refit, GCV's lambda per task | "
             "refit, best lambda on test (oracle) | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(methods)]
    for r in rows:
        best = int(np.argmax(r["accuracy"]))
        lines.append(f"| {r['task']} | {r['shots']} ({r['support_images']} images) | {pct(r['pudnet'])} | "
                     f"{pct(r['refit_learned'])} ({r['learned_log_lambda']:+.2f}) | {pct(r['accuracy'][r['gcv_pick']])} "
                     f"({r['grid'][r['gcv_pick']]:+.1f}; {r['gcv_ms']:.0f} ms) | {pct(r['accuracy'][best])} "
                     f"({r['grid'][best]:+.1f}) | " + " | ".join(pct(r["baselines"][m]) for m in methods) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
