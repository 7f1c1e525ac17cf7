"""A training checkpoint beyond the model: the optimiser and scheduler states and the step, saved by rank 0
and restored by every worker when Ray Train (re)starts the run."""
from __future__ import annotations

import json
from pathlib import Path

import ray.train
import torch

from pudnet.data.tasks import ClassSplit
from pudnet.model import checkpoint
from pudnet.model.hypernetwork import PudNet

OPTIMIZER_FILE = "optimizer.pt"


def save(directory: str, metrics: dict, net: PudNet, optimizer, scheduler, split: ClassSplit, config: dict,
         roots: list[str]) -> None:
    """Write a full training checkpoint into ``directory``: weights, optimiser and scheduler, ``state.json``."""
    checkpoint.save(directory, net, split, extra={"train_config": json.dumps(config), "shard_roots": json.dumps(roots),
                                                  "step": str(metrics["step"])})
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               Path(directory, OPTIMIZER_FILE))
    checkpoint.write_state(directory, metrics["step"], metrics)


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
        return checkpoint.read_step(d)


def resumed_step(run_dir: str) -> int:
    """The step of the run's latest checkpoint, 0 for a new run (the checkpoint Ray Train resumes from)."""
    try:
        result = ray.train.Result.from_path(run_dir)
    except RuntimeError:   # no such run yet, or no checkpoint recorded
        return 0
    if result.checkpoint is None:
        return 0
    fs, path = result.checkpoint.filesystem, f"{result.checkpoint.path}/{checkpoint.STATE_FILE}"
    with fs.open_input_stream(path) as f:    # state.json alone: no need to download the weights
        return checkpoint.parse_step(f.read())
