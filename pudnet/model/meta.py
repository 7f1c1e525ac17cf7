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
    query_class: torch.Tensor | None = None   # (K*Q,) meta-train class ids for the auxiliary loss, -1 for none

    @classmethod
    def from_subdataset(cls, sub: SubDataset, model: PudNet, class_ids: dict[str, int] | None = None) -> "Episode":
        """``class_ids`` (name -> position among the meta-train classes) labels the query images for the
        auxiliary loss; classes it lacks (the stream's rotated or inverted pseudo-classes) get -1."""
        device = next(model.parameters()).device
        cfg = model.cfg
        query_x, query_y = sub.tensors("query", cfg.mean, cfg.std, device)
        query_class = None
        if class_ids is not None:
            query_class = torch.tensor([class_ids.get(name, -1) for name in sub.class_names], device=device)[query_y]
        return cls(*sub.tensors("support", cfg.mean, cfg.std, device), query_x, query_y, sub.num_classes, query_class)


def episode_loss(model: PudNet, ep: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy on the query set of the target generated from the support set, plus, with
    ``cfg.aux_weight``, the auxiliary loss: every meta-train class's logit from the same query features."""
    weights = model(ep.support_x, ep.support_y, ep.num_classes)
    net = getattr(model, "module", model)                            # through a DistributedDataParallel wrapper
    head = net.target.spec.head.name
    features = net.target.features(weights, ep.query_x)              # (K*Q, F): one pass for both losses
    logits = F.linear(features, weights[f"{head}.weight"], weights[f"{head}.bias"])   # (K*Q, K)
    loss = F.cross_entropy(logits, ep.query_y)
    accuracy = (logits.argmax(1) == ep.query_y).float().mean()
    if hasattr(net, "aux_head") and ep.query_class is not None:
        # the mean over labelled images; with none it is 0 and still reaches every parameter (DDP expects that),
        # without a branch on the device's values
        aux = F.cross_entropy(net.aux_head(features), ep.query_class, ignore_index=-1, reduction="sum")
        loss = loss + net.cfg.aux_weight * aux / (ep.query_class >= 0).sum().clamp_min(1)
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
