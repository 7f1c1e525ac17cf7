"""Rank 0's training metrics: the window of steps since the last report, and where each report goes
(the run's ``metrics.jsonl``, which ``jobs.progress`` shows on the driver, gauges on the Ray dashboard, a log line).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import ray
import torch
from ray.util.metrics import Counter, Gauge

from jobs import progress
from jobs.ddp import mean_across_workers
from jobs.progress import METRICS_FILE
from pudnet.files import filesystem, join


class StepWindow:
    """Loss, accuracy and time split (waiting for data vs computing) of the steps since the last report."""

    def __init__(self, tasks_per_step: int, images_per_task: int):
        self.tasks_per_step, self.images_per_task = tasks_per_step, images_per_task
        self.loss = self.acc = self.wait = self.compute = 0.0
        self.steps = 0

    def add(self, loss: float, acc: float, wait: float, compute: float) -> None:
        self.loss, self.acc, self.steps = self.loss + loss, self.acc + acc, self.steps + 1
        self.wait, self.compute = self.wait + wait, self.compute + compute

    @property
    def tasks(self) -> int:
        return self.steps * self.tasks_per_step

    def summary(self, device: torch.device) -> dict:
        """Means over all workers (a collective: every rank must call it)."""
        loss, acc, wait, compute = mean_across_workers(
            [self.loss / self.steps, self.acc / self.steps, self.wait, self.compute], device)
        return {"loss": loss, "query_accuracy": acc, "tasks_per_s": self.tasks / (wait + compute),
                "images_per_s": self.tasks * self.images_per_task / (wait + compute),
                "data_wait_fraction": wait / (wait + compute)}


class Reporter:
    """Rank 0's outputs: the run's own metrics.jsonl (Ray keeps only metrics that come with a checkpoint),
    gauges on the Ray dashboard, and a ``[pudnet]`` progress line in the log."""

    GAUGES = ("loss", "query_accuracy", "val_accuracy", "tasks_per_s", "images_per_s", "data_wait_fraction",
              "gpu_memory_gb")

    def __init__(self, run_dir: str, name: str, steps: int, device: torch.device, start: dict):
        self.fs, self.path = filesystem(join(run_dir, METRICS_FILE))
        self.lines, self.steps, self.device, self.start = [], steps, device, time.perf_counter()
        if self.fs.get_file_info(self.path).size:
            with self.fs.open_input_stream(self.path) as f:
                self.lines = f.read().decode().splitlines()
        self.tags = {"run": name}
        self.gauges = {k: Gauge(f"pudnet_train_{k}", description=f"PudNet meta-training {k}", tag_keys=("run",))
                       for k in self.GAUGES}
        self.tasks = Counter("pudnet_train_tasks", description="sub-datasets trained on", tag_keys=("run",))
        self._append({"event": "start", **start})
        say(progress.line({"event": "start", **start}, steps))

    def log(self, metrics: dict, tasks: int) -> None:
        metrics["elapsed_s"] = time.perf_counter() - self.start
        if self.device.type == "cuda":
            metrics["gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._append(metrics)
        for k, gauge in self.gauges.items():
            if metrics.get(k) is not None:
                gauge.set(float(metrics[k]), tags=self.tags)
        self.tasks.inc(tasks, tags=self.tags)
        say(progress.line(metrics, self.steps))

    def _append(self, record: dict) -> None:
        """Rewrite the whole (small) file: object stores cannot append."""
        self.lines.append(json.dumps(record))
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(("\n".join(self.lines) + "\n").encode())
        self.fs.move(tmp, self.path)


def say(line: str) -> None:
    """Print once from a Train worker (Ray Train's patched ``print`` writes every line twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def versions() -> dict:
    return {"ray": ray.__version__, "torch": torch.__version__, "numpy": np.__version__}
