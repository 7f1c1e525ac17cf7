"""What DDP workers compare and share: a digest of the weights, a gather of one value, a mean of a few."""
from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


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
