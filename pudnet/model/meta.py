"""Meta-training objective: predict weights from a sub-dataset's support set, score its query set."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pudnet.data.tasks import SubDataset
from .hypernetwork import PudNet


@dataclass
class Episode:
    """A sub-dataset as model-ready tensors on one device."""

    support_x: torch.Tensor   # (K*S, 3, R, R) normalised
    support_y: torch.Tensor   # (K*S,) int64
    query_x: torch.Tensor     # (K*Q, 3, R, R)
    query_y: torch.Tensor     # (K*Q,)
    num_classes: int

    @classmethod
    def from_subdataset(cls, sub: SubDataset, model: PudNet) -> "Episode":
        device = next(model.parameters()).device
        cfg = model.cfg
        return cls(*sub.tensors("support", cfg.mean, cfg.std, device), *sub.tensors("query", cfg.mean, cfg.std, device),
                   sub.num_classes)


def episode_loss(model: PudNet, ep: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy on the query set of the target generated from the support set."""
    weights = model(ep.support_x, ep.support_y, ep.num_classes)
    target = getattr(model, "module", model).target                  # through a DistributedDataParallel wrapper
    logits = target(weights, ep.query_x)                             # (K*Q, K)
    loss = F.cross_entropy(logits, ep.query_y)
    accuracy = (logits.argmax(1) == ep.query_y).float().mean()
    return loss, accuracy.detach()


def train_step(model: PudNet, optimizer: torch.optim.Optimizer, episodes: list[Episode],
               grad_clip: float = 1.0) -> tuple[float, float]:
    """One optimiser step, gradients accumulated over ``episodes``; returns mean loss and query accuracy.

    A non-finite loss raises instead of corrupting the weights: resume from the last checkpoint
    with a lower learning rate.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total_loss, total_acc = 0.0, 0.0
    for i, ep in enumerate(episodes):
        last = i == len(episodes) - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():  # DDP: one all-reduce
            loss, acc = episode_loss(model, ep)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite meta-training loss {loss.item()}: resume from the last checkpoint "
                                   "with a lower lr")
            ((loss + getattr(model, "module", model).penalty()) / len(episodes)).backward()
        total_loss, total_acc = total_loss + loss.item(), total_acc + acc.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return total_loss / len(episodes), total_acc / len(episodes)
