"""Helpers of jobs/train.py around its training loop: the stream, checkpoints, metrics, the final evaluation.

The math lives in pudnet/; this module is the Ray wiring and bookkeeping.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.util.metrics import Counter, Gauge

from jobs import progress
from jobs.progress import METRICS_FILE
from pudnet.model import checkpoint
from pudnet.data.tasks import ClassSplit
from pudnet.model.hypernetwork import PudNet
from pudnet.data.shards import filesystem, join
from pudnet.data.stream import SubDatasetBuilder

OPTIMIZER_FILE = "optimizer.pt"


def resumed_step(run_dir: str) -> int:
    """The step of the run's latest checkpoint, 0 for a new run (read the way Ray Train resumes it)."""
    try:
        result = ray.train.Result.from_path(run_dir)
    except RuntimeError:   # no such run yet, or no checkpoint recorded
        return 0
    return int(result.metrics["step"]) if result.checkpoint and result.metrics else 0


def make_stream(cfg: dict, roots: list[str], classes: list[str], run_dir: str) -> ray.data.Dataset:
    """The training stream: rows are sub-datasets of ``classes``, built by CPU actors from the shards.

    Ray Train calls this at every (re)start of the worker group, so a resumed run continues with the
    tasks after its checkpoint instead of replaying the first ones. Each worker takes its equal share
    through ``get_dataset_shard``; task indices are random draws, so the stream needs no shuffle.
    """
    per_step = cfg["tasks_per_step"] * cfg["num_workers"]
    start = resumed_step(run_dir)
    # One row per global step holding its task ids, built right here: ray.data.range and from_arrow would
    # run tasks of a whole CPU, which a small or fully used cluster does not have, and the stream would stall.
    steps = [{"id": np.arange(s * per_step, (s + 1) * per_step)} for s in range(start, max(cfg["steps"], start + 1))]
    return ray.data.from_items(steps, override_num_blocks=min(len(steps), 200)).map_batches(
        SubDatasetBuilder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg["stream_actors"]),
        num_cpus=cfg["stream_cpus"],
        fn_constructor_kwargs=dict(roots=roots, classes=classes, ways=cfg["ways"], shots=cfg["shots"],
                                   queries=cfg["queries"], seed=cfg["seed"], window_rows=cfg["window_rows"],
                                   cache_mb=cfg["stream_cache_mb"], augment_p_class=cfg["augment_p_class"],
                                   augment_shift=cfg["augment_shift"], ways_max=cfg["ways_max"],
                                   shots_max=cfg["shots_max"], max_support=cfg["max_support"]))


def digest(model: torch.nn.Module) -> str:
    """A short hash of every parameter: equal across DDP ranks iff their weights are identical."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def gather(value):
    """All ranks' ``value`` (a list of one on a single worker)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def mean_across_workers(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def restore(ckpt: ray.train.Checkpoint | None, net: PudNet, optimizer, scheduler, split: ClassSplit) -> int:
    """Load a Ray Train checkpoint into the model and optimiser; returns its step (0 without one)."""
    if ckpt is None:
        return 0
    with ckpt.as_directory() as d:
        loaded = checkpoint.load(d)
        if loaded.split != split:
            raise ValueError(f"checkpoint {ckpt.path} was trained on another class split: keep the run's "
                             "sources/heldout_sources/intra_fraction/split_seed, or start a new run name")
        net.load_state_dict(loaded.model.state_dict())
        states = torch.load(Path(d, OPTIMIZER_FILE), map_location=next(net.parameters()).device)
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
        return int(json.loads(Path(d, checkpoint.STATE_FILE).read_text())["step"])


def report(metrics: dict, net: PudNet | None = None, optimizer=None, scheduler=None, split=None,
           config: dict | None = None, roots: list[str] | None = None) -> None:
    """``ray.train.report``; with ``net`` (rank 0 only) a checkpoint goes with it."""
    if net is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(d, net, split, extra={"train_config": json.dumps(config), "shard_roots": json.dumps(roots),
                                                "step": str(metrics["step"])})
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, Path(d, OPTIMIZER_FILE))
        state = {"step": metrics["step"], "metrics": metrics}
        Path(d, checkpoint.STATE_FILE).write_text(json.dumps(state, indent=1))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


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


def inject_failure(run_dir: str, step: int) -> None:
    """Chaos test: raise once per run at ``step`` (a marker in the run dir stops the retry from raising again)."""
    fs, marker = filesystem(join(run_dir, f"injected-failure-{step}"))
    if fs.get_file_info(marker).size is None:
        fs.create_dir(marker.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(marker) as f:
            f.write(str(time.time()).encode())
        raise RuntimeError(f"injected failure at step {step} (fail_at_step): FailureConfig should restart the run")


def say(line: str) -> None:
    """Print once from a Train worker (Ray Train's patched ``print`` writes every line twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def versions() -> dict:
    return {"ray": ray.__version__, "torch": torch.__version__, "numpy": np.__version__}
