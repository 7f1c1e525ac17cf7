"""The meta-training recipe (optimiser, learning-rate schedule, task shapes, augmentation), shared by the Ray
training job (``jobs/train.py``, which streams tasks) and in-process runs (``bench/``, tests), so an ablation
trains exactly as the job does.

``cfg`` is a ``jobs.train.TrainConfig`` (or anything with its recipe fields): the recipe's settings live there.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import torch

from pudnet.data.augment import Augmentation
from pudnet.data.stream import step_tasks
from pudnet.data.tasks import ClassDraw, SubDataset, SubDatasetSampler
from .config import PudNetConfig
from .hypernetwork import PudNet
from .meta import Episode, train_step

BASE_PARAMETERS = (".base", ".u", ".v")   # the generators' learned kernels, not generated from the data


def lr_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the learning rate at ``step``: linear warm-up (a hypernetwork's first steps are the
    unstable ones), then cosine decay to 0 at ``steps`` or constant."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return warm * (0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)) if schedule == "cosine" else 1.0)


def optimizer_and_schedule(net: PudNet, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``net`` with the base kernels at ``cfg.base_lr_scale`` times ``cfg.lr`` (TADAM: a slower
    base cannot absorb what the data-dependent path should learn), and the warm-up + cosine/constant schedule.
    The base kernels get their own parameter group only when the scale is not 1."""
    groups = [{"params": list(net.parameters())}]   # one group at scale 1: an optimiser state saved before
    if cfg.base_lr_scale != 1:                        # base_lr_scale existed (one group) still resumes
        base, rest = [], []
        for name, p in net.named_parameters():
            (base if name.startswith("generators.") and name.endswith(BASE_PARAMETERS) else rest).append(p)
        groups = [{"params": rest, "lr": cfg.lr}, {"params": base, "lr": cfg.lr * cfg.base_lr_scale}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule))
    return optimizer, schedule


def with_aux_classes(model: PudNetConfig, classes: Sequence[str]) -> PudNetConfig:
    """``model`` with its auxiliary classifier sized to the meta-train ``classes`` (unchanged without one)."""
    return dataclasses.replace(model, aux_classes=len(classes)) if model.aux_weight else model


def class_ids(model: PudNetConfig, classes: Sequence[str]) -> dict[str, int] | None:
    """Each meta-train class's row in the auxiliary classifier, or None when ``model`` has none."""
    return {name: i for i, name in enumerate(classes)} if model.aux_weight else None


def local_tasks(cfg, sampler: SubDatasetSampler, step: int) -> list[SubDataset]:
    """Step ``step``'s tasks as the training stream (one worker) builds them, ``pudnet.data.stream.step_tasks``:
    the same indices, (K, S) and seeded augmentation, with images from ``sampler`` instead of the shards."""
    ids = range(step * cfg.tasks_per_step, (step + 1) * cfg.tasks_per_step)

    draw = ClassDraw.from_config(cfg)

    def sample(index: int, k: int, s: int) -> SubDataset:
        return sampler.sample(index, k, s, cfg.queries, draw=draw)
    return step_tasks(ids, sample, cfg.seed,
                      (cfg.ways, max(cfg.ways, cfg.ways_max)), (cfg.shots, max(cfg.shots, cfg.shots_max)),
                      cfg.max_support, Augmentation.from_config(cfg))


def meta_train_local(cfg, sampler: SubDatasetSampler, log_every: int = 0) -> PudNet:
    """``jobs/train.py``'s recipe in one process without Ray: same model, optimiser, schedule, task shapes,
    augmentation, accumulation and clipping; tasks come from ``sampler`` instead of the shard stream."""
    model = with_aux_classes(cfg.model, sampler.classes)
    ids = class_ids(model, sampler.classes)
    torch.manual_seed(cfg.seed)
    net = PudNet(model)
    optimizer, schedule = optimizer_and_schedule(net, cfg)
    start = time.perf_counter()
    for step in range(cfg.steps):
        tasks = local_tasks(cfg, sampler, step)
        loss, acc = train_step(net, optimizer, [Episode.from_subdataset(t, net, ids) for t in tasks], cfg.grad_clip)
        schedule.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{cfg.steps} loss {loss:.3f} acc {acc:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return net.eval()
