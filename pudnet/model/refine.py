"""A meta-learned refinement of the generated body by its own loss on the support set (issue 9, item 4).

Why: the sketch alone did not make the body depend on the data (a foreign sketch cost +0.0 points, see
bench/results_ablations.md), and a closed-form head fitted on the support set leaves nothing for a support
loss to say unless the loss is held out. Here the body reads the data through a gradient, in the spirit of
MAML (Finn et al. 2017), Meta-SGD (Li et al. 2017, learned per-parameter step sizes) and HyperMAML
(Przewiezlikowski et al. 2022, a hypernetwork whose output is refined by the task's loss):

    theta'_l = theta_l - alpha_{t,l} * rms(w_l) * g_l / rms(g_l),    g = d L_split / d theta  (first order)

with w_l the weight of the layer that tensor l belongs to (its own, or a BatchNorm's for its bias, which starts
at 0), so alpha is a step relative to the layer's scale. L_split is the ridge head's split-half loss on a seeded
sample of at most ``refine_per_class`` support images per class (and what ``memory_mb`` holds): the head is fitted on one half
and scores the other, and the reverse. g is computed on a detached copy of theta (no second-order terms, and the
same code at prediction under ``torch.no_grad``), so each step costs one forward and one backward pass of the
target over the sample. The step sizes alpha start at ``refine_alpha_init`` (0: training starts from the
unrefined body); their meta-gradient is -<dL_query/dtheta', step>, which is not zero at alpha = 0 (a zero gate
times a zero-initialised net, the conditioning's first try, was).
Measured in bench/results_ablations.md: opt-in, since ten steps cost more than the rest of a prediction.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import ridge_head


def split_half_loss(features: torch.Tensor, labels: torch.Tensor, half: torch.Tensor, num_classes: int,
                    log_lambda: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a ridge head fitted on the rows where ``half`` is False, scoring the other rows, plus
    the reverse. features (N, F), labels (N,), half (N,) bool."""
    loss = features.new_zeros(())
    for fit in (~half, half):
        weight, bias = ridge_head(features[fit], labels[fit], num_classes, log_lambda, scale)
        loss = loss + F.cross_entropy(features[~fit] @ weight.t() + bias, labels[~fit])
    return loss / 2


class BodyRefinement(nn.Module):
    """``steps`` normalised gradient steps on the generated body tensors ``names``, one learned size per
    (step, tensor), starting at ``alpha_init`` (0: the identity) and kept at or above ``alpha_min`` if given
    (learned from 0.06 without a floor they shrank, and the body stopped depending on the data)."""

    def __init__(self, names: list[str], steps: int, alpha_init: float = 0.0, alpha_min: float | None = None):
        super().__init__()
        self.names, self.alpha_min = list(names), alpha_min
        self.alpha = nn.Parameter(torch.full((steps, len(self.names)), alpha_init))

    def step_sizes(self) -> torch.Tensor:
        """(steps, len(names)): the learned sizes, floored at ``alpha_min``."""
        return self.alpha if self.alpha_min is None else self.alpha.clamp_min(self.alpha_min)

    def forward(self, body: dict[str, torch.Tensor], loss_fn) -> dict[str, torch.Tensor]:
        """body: generated tensors (with their graph); loss_fn(body) -> scalar support loss. Returns theta'."""
        body = dict(body)
        for alphas in self.step_sizes():
            with torch.enable_grad():
                theta = {name: body[name].detach().requires_grad_() for name in self.names}
                grads = torch.autograd.grad(loss_fn({**body, **theta}), [theta[n] for n in self.names])
            for name, alpha, g in zip(self.names, alphas, grads):
                ref = _rms(theta[name.rsplit(".", 1)[0] + ".weight"].detach())
                body[name] = body[name] - alpha * (ref / _rms(g).clamp_min(1e-12)) * g      # rms(step) = alpha rms(w)
        return body


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean().sqrt()
