"""PudNet against no-learning baselines, a linear probe and SGD from scratch, on unseen tasks.

Every method sees the same support images of a task and is scored on the task's test images
(never used to learn or to stop). SGD/Adam stops early on the task's query images, used as a
validation split (in the whole-dataset protocol, ``pudnet.evaluation.whole``, a split cut from the support
set that Adam then does not train on). Weights are always evaluated the same way: BatchNorm
statistics recomputed on (at most ``max_stats_images`` of) the support set, target run in eval
mode (``TargetRunner``), images passed in chunks so a whole dataset fits in memory. That statistics pass
reads a trained net out; it is evaluation, not training, so the seconds of Adam from scratch and of fine-tuning
count their optimiser steps only (PudNet's seconds include its own statistics pass: it is part of the prediction).
No method's seconds include scoring the test images.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pudnet.data.tasks import SubDataset
from pudnet.model.hypernetwork import PudNet, prototype_head
from pudnet.model.targets import build
from pudnet.overrides import CONFIG

FAST_METHODS = ("random_init", "ncm_pixels", "random_prototype", "pudnet")


@dataclass(frozen=True)
class SGDSettings:
    """Optimiser for SGD from scratch and for fine-tuning PudNet's prediction."""

    __pydantic_config__ = CONFIG        # unknown keys raise (pudnet.overrides)

    lr: float = 1e-3
    batch_size: int = 10                  # SGD from scratch
    max_epochs: int = 100
    patience: int = 10                    # epochs without a better validation accuracy
    finetune_steps: tuple[int, ...] = (1, 10, 100)
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 0          # 0: the whole support set, so train-mode BatchNorm starts exactly at
                                          # PudNet's support statistics


@dataclass
class Point:
    """A snapshot of SGD from scratch: cumulative learning time and accuracies."""

    step: int
    seconds: float
    val: float
    test: float


@dataclass
class TaskResult:
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)   # method -> (test accuracy, seconds)
    sgd_curve: list[Point] = field(default_factory=list)


def ridge_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
               lambdas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares on one-hot targets with an intercept, ridge strength picked by leave-one-out error.

    features (N, F), labels (N,) -> weight (K, F), bias (K,). ``lambdas`` are relative to the mean
    squared singular value; the leave-one-out residuals come in closed form from one SVD.
    """
    mu = features.mean(0)
    y = F.one_hot(labels, num_classes).to(features.dtype)
    y_mean = y.mean(0)
    u, s, vh = torch.linalg.svd(features - mu, full_matrices=False)         # (N, r), (r,), (r, F)
    uy, s2 = u.t() @ (y - y_mean), s.pow(2)                                  # (r, K)
    best = None
    for lam in lambdas:
        shrink = s2 / (s2 + lam * s2.mean())
        hat = u.pow(2) @ shrink + 1 / len(labels)                            # diagonal of the hat matrix
        residual = (y - y_mean - u @ (shrink[:, None] * uy)) / (1 - hat).clamp_min(1e-6)[:, None]
        loo = float(residual.pow(2).mean())
        if best is None or loo < best[0]:
            best = (loo, lam)
    w = vh.t() @ ((s / (s2 + best[1] * s2.mean()))[:, None] * uy)            # (F, K)
    return w.t(), y_mean - mu @ w


def _seconds_since(start: float) -> float:
    """Wall seconds since ``start``, an accelerator's queued work included (its kernels run asynchronously)."""
    if torch.accelerator.is_available():
        torch.accelerator.synchronize()
    return time.perf_counter() - start


class Evaluator:
    def __init__(self, model: PudNet, settings: SGDSettings = SGDSettings(), seed: int = 0,
                 max_stats_images: int = 1024):
        self.model, self.settings, self.seed = model.eval(), settings, seed
        self.cfg, self.runner = model.cfg, model.target
        self.device = next(model.parameters()).device
        self.max_stats_images = max_stats_images

    def tensors(self, task: SubDataset):
        """((support x, y), (query x, y), (test x, y)) on the model's device."""
        return tuple(task.tensors(part, self.cfg.mean, self.cfg.std, self.device) for part in ("support", "query", "test"))

    @torch.no_grad()
    def accuracy(self, weights, x, y) -> float:
        chunk = self.model.chunk_images()
        correct = sum(int((self.runner(weights, xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(chunk),
                                                                                              y.split(chunk)))
        return correct / len(y)

    @torch.no_grad()
    def features(self, weights, x) -> torch.Tensor:
        """(N, F) head inputs in eval mode, in chunks: the target run with an identity head."""
        head, dim = self.runner.spec.head, self.runner.spec.feature_dim
        identity = {**weights, f"{head.name}.weight": torch.eye(dim, device=x.device)}
        if head.has_bias:
            identity[f"{head.name}.bias"] = x.new_zeros(dim)
        return torch.cat([self.runner(identity, xb) for xb in x.split(self.model.chunk_images())])

    def _net(self, k: int, index: int) -> torch.nn.Module:
        torch.manual_seed(self.seed * 100_003 + index)
        return build(self.cfg.arch, k, **self.cfg.target_kwargs).to(self.device)

    def _weights(self, net: torch.nn.Module, support_x) -> dict[str, torch.Tensor]:
        """The net's parameters with BatchNorm statistics recomputed on the support set (a fixed seeded
        subset of ``max_stats_images`` when it is larger: one pass, bounded memory)."""
        params = {k: v.detach() for k, v in net.named_parameters()}
        if len(support_x) > self.max_stats_images:
            g = torch.Generator().manual_seed(self.seed)
            support_x = support_x[torch.randperm(len(support_x), generator=g)[:self.max_stats_images].to(self.device)]
        with torch.no_grad():
            stats, _ = self.runner.support_pass(params, support_x)
        return {**params, **stats}

    def _fit_head(self, k: int, index: int, sx, sy, head_fn) -> dict[str, torch.Tensor]:
        """A random target net (BatchNorm statistics from the support set) with a head fitted on its features."""
        weights = self._weights(self._net(k, index), sx)
        head = self.runner.spec.head.name
        weights[f"{head}.weight"], weights[f"{head}.bias"] = head_fn(self.features(weights, sx), sy, k)
        return weights

    def run(self, task: SubDataset, index: int, methods: tuple[str, ...],
            sgd_rows: torch.Tensor | None = None) -> TaskResult:
        """Every method in ``methods`` on ``task``; Adam from scratch trains on the support rows ``sgd_rows``
        (default: all), the other methods learn from the whole support set."""
        (sx, sy), (qx, qy), (tx, ty) = self.tensors(task)
        k, out = task.num_classes, TaskResult()
        if "random_init" in methods:
            start = time.perf_counter()
            net = self._net(k, index).eval()
            seconds = _seconds_since(start)
            with torch.no_grad():
                out.scores["random_init"] = (float((net(tx).argmax(1) == ty).float().mean()), seconds)
        if "ncm_pixels" in methods:
            start = time.perf_counter()
            weight, bias = prototype_head(sx.flatten(1), sy, k, 1.0)
            seconds = _seconds_since(start)
            pred = (tx.flatten(1) @ weight.t() + bias).argmax(1)
            out.scores["ncm_pixels"] = (float((pred == ty).float().mean()), seconds)
        for method, head_fn in (("random_prototype", lambda f, y, k: prototype_head(f, y, k, 1.0)),
                                ("linear_probe", ridge_head)):
            if method in methods:
                start = time.perf_counter()
                weights = self._fit_head(k, index, sx, sy, head_fn)
                seconds = _seconds_since(start)
                out.scores[method] = (self.accuracy(weights, tx, ty), seconds)
        predicted = None
        if any(m.startswith("pudnet") for m in methods):
            start = time.perf_counter()
            with torch.no_grad():
                predicted = self.model(sx, sy, k)
            gen_s = _seconds_since(start)
            out.scores["pudnet"] = (self.accuracy(predicted, tx, ty), gen_s)
            wanted = {f"pudnet_ft{s}": s for s in self.settings.finetune_steps if f"pudnet_ft{s}" in methods}
            if "pudnet_ft1epoch" in methods:
                wanted["pudnet_ft1epoch"] = math.ceil(len(sy) / (self.settings.finetune_batch_size or len(sy)))
            if wanted:
                for step, seconds, weights in self._finetune(predicted, k, index, sx, sy, set(wanted.values())):
                    accuracy = self.accuracy(weights, tx, ty)
                    out.scores.update({m: (accuracy, gen_s + seconds) for m, s in wanted.items() if s == step})
        if any(m.startswith("sgd") for m in methods):
            if sgd_rows is not None:
                sx, sy = sx[sgd_rows.to(self.device)], sy[sgd_rows.to(self.device)]
            out.sgd_curve = self._sgd(k, index, (sx, sy), (qx, qy), (tx, ty))
            epoch_steps = math.ceil(len(sy) / self.settings.batch_size)
            best = max(out.sgd_curve[1:], key=lambda p: (p.val, -p.step))   # earliest best validation epoch
            out.scores["sgd_1step"] = (out.sgd_curve[0].test, out.sgd_curve[0].seconds)
            out.scores["sgd_1epoch"] = next((p.test, p.seconds) for p in out.sgd_curve if p.step == epoch_steps)
            # the weights of the best validation epoch, but the time of the whole run: early stopping only
            # knows an epoch was best after `patience` more epochs
            out.scores["sgd_converged"] = (best.test, out.sgd_curve[-1].seconds)
        out.scores = {m: score for m, score in out.scores.items() if m in methods}
        return out

    def _batches(self, n: int, index: int, batch_size: int):
        """Endless shuffled minibatch indices, seeded per task."""
        g = torch.Generator().manual_seed(self.seed * 7919 + index)
        while True:
            for chunk in torch.randperm(n, generator=g).split(batch_size or n):
                yield chunk.to(self.device)

    def _finetune(self, predicted, k, index, sx, sy, steps):
        """Adam from PudNet's weights; yields (step, seconds of its steps, read-out weights) at each requested step."""
        net = self._net(k, index)
        net.load_state_dict(predicted)
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=self.settings.finetune_lr)
        batches, elapsed = self._batches(len(sy), index, self.settings.finetune_batch_size), 0.0
        for step in range(1, max(steps) + 1):
            start = time.perf_counter()
            rows = next(batches)
            opt.zero_grad()
            F.cross_entropy(net(sx[rows]), sy[rows]).backward()
            opt.step()
            elapsed += _seconds_since(start)
            if step in steps:
                yield step, elapsed, self._weights(net, sx)

    def _sgd(self, k, index, support, val, test) -> list[Point]:
        """Adam from a random init: a point after step 1 and after every epoch, early stopping on val; a point's
        seconds are those of the steps before it (the read-out is not timed, see the module docstring)."""
        (sx, sy), (vx, vy), (tx, ty) = support, val, test
        net = self._net(k, index).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.settings.lr)
        batches = self._batches(len(sy), index, self.settings.batch_size)
        epoch_steps = math.ceil(len(sy) / self.settings.batch_size)
        curve, elapsed, best, since_best = [], 0.0, -1.0, 0
        for step in range(1, self.settings.max_epochs * epoch_steps + 1):
            start = time.perf_counter()
            rows = next(batches)
            opt.zero_grad()
            F.cross_entropy(net(sx[rows]), sy[rows]).backward()
            opt.step()
            elapsed += _seconds_since(start)
            if step != 1 and step % epoch_steps:
                continue
            weights = self._weights(net, sx)
            curve.append(Point(step, elapsed, self.accuracy(weights, vx, vy), self.accuracy(weights, tx, ty)))
            if step % epoch_steps == 0:
                best, since_best = (curve[-1].val, 0) if curve[-1].val > best else (best, since_best + 1)
                if since_best >= self.settings.patience:
                    break
        return curve


def summarize(results: list[TaskResult]) -> dict[str, dict[str, float]]:
    """Per method: mean test accuracy, 95% interval half-width (normal approx.), mean seconds."""
    summary = {}
    for method in results[0].scores:
        acc = np.array([r.scores[method][0] for r in results])
        sec = np.array([r.scores[method][1] for r in results])
        summary[method] = {"accuracy": float(acc.mean()), "ci95": float(1.96 * acc.std(ddof=1) / math.sqrt(len(acc)))
                           if len(acc) > 1 else 0.0, "seconds": float(sec.mean()), "tasks": len(acc)}
    return summary


def mean_curve(results: list[TaskResult]) -> list[dict[str, float]]:
    """SGD from scratch's curve averaged over tasks, point by point (a stopped task keeps its last point)."""
    length = max(len(r.sgd_curve) for r in results)
    padded = [r.sgd_curve + [r.sgd_curve[-1]] * (length - len(r.sgd_curve)) for r in results]
    return [{"step": padded[0][i].step, **{key: float(np.mean([getattr(c[i], key) for c in padded]))
                                           for key in ("seconds", "val", "test")}} for i in range(length)]


def time_to_equal_accuracy(results: list[TaskResult]) -> dict[str, float | bool]:
    """How long SGD from scratch takes to match PudNet's mean accuracy, over PudNet's time.

    Uses the mean SGD curve over tasks. If SGD never matches, the ratio is a lower bound
    (``reached`` False) from SGD's longest mean time.
    """
    target = float(np.mean([r.scores["pudnet"][0] for r in results]))
    pudnet_s = float(np.mean([r.scores["pudnet"][1] for r in results]))
    for point in mean_curve(results):
        acc, seconds = point["test"], point["seconds"]
        if acc >= target:
            return {"ratio": seconds / pudnet_s, "sgd_seconds": seconds, "pudnet_seconds": pudnet_s,
                    "pudnet_accuracy": target, "sgd_accuracy": acc, "reached": True}
    return {"ratio": seconds / pudnet_s, "sgd_seconds": seconds, "pudnet_seconds": pudnet_s,
            "pudnet_accuracy": target, "sgd_accuracy": acc, "reached": False}


METHOD_LABELS = {
    "random_init": "random init (no learning)", "ncm_pixels": "nearest class mean, raw pixels",
    "random_prototype": "random target net + class-mean head",
    "linear_probe": "random target net + ridge head (linear probe)", "pudnet": "PudNet prediction",
    "pudnet_ft1epoch": "PudNet + 1 fine-tune epoch", "pudnet_ft1": "PudNet + 1 fine-tune step", "pudnet_ft10": "PudNet + 10 fine-tune steps",
    "pudnet_ft100": "PudNet + 100 fine-tune steps", "sgd_1step": "Adam from scratch, 1 step",
    "sgd_1epoch": "Adam from scratch, 1 epoch", "sgd_converged": "Adam from scratch, early-stopped on validation",
}
ALL_METHODS = tuple(METHOD_LABELS)


TASK_METHODS = tuple(m for m in METHOD_LABELS if m != "pudnet_ft1epoch")   # sub-dataset protocol's default


def evaluate_tasks(evaluator: Evaluator, tasks, methods: tuple[str, ...] = TASK_METHODS,
                   progress=None, warm_up: bool = True) -> dict:
    """Run ``methods`` on every task; returns the summary and, when SGD ran, the time ratio and SGD's curve.

    ``tasks`` yields SubDatasets, or (SubDataset, Adam's support rows) pairs; ``progress`` (e.g. tqdm)
    wraps the iteration if given.
    """
    results = []
    for i, task in enumerate(progress(tasks) if progress else tasks):
        task, sgd_rows = task if isinstance(task, tuple) else (task, None)
        if i == 0 and warm_up:  # first calls pay for allocator and kernel set-up, which no method should be timed on
            evaluator.run(task, i, methods, sgd_rows)
        results.append(evaluator.run(task, i, methods, sgd_rows))
    out = {"methods": summarize(results)}
    if results[0].sgd_curve:
        out["sgd_curve"] = mean_curve(results)
        if "pudnet" in out["methods"]:
            out["time_to_equal_accuracy"] = time_to_equal_accuracy(results)
    return out


def markdown_table(setting: str, report: dict) -> str:
    """One Markdown table: method, accuracy +- 95% interval, mean wall seconds per task."""
    rows = [f"**{setting}** ({next(iter(report['methods'].values()))['tasks']} tasks)", "",
            "| method | test accuracy (%) | seconds / task |", "|---|---|---|"]
    for method, r in report["methods"].items():
        rows.append(f"| {METHOD_LABELS.get(method, method)} | {100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f} "
                    f"| {r['seconds']:.4f} |")
    ratio = report.get("time_to_equal_accuracy")
    if ratio:
        bound = "" if ratio["reached"] else "> (SGD never reached PudNet's accuracy; lower bound) "
        rows += ["", f"Time-to-equal-accuracy ratio: {bound}{ratio['ratio']:.1f} "
                     f"(SGD {ratio['sgd_seconds']:.3f} s to {100 * ratio['sgd_accuracy']:.1f}% vs PudNet "
                     f"{ratio['pudnet_seconds']:.4f} s for {100 * ratio['pudnet_accuracy']:.1f}%)"]
    return "\n".join(rows)
