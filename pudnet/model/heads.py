"""Classifier heads fitted to the generated body's support features, and the seeded support sample.

Every head returns a plain linear layer, weight (K, F) and bias (K,), so the generated state_dict
loads into torchvision's ``fc`` (or the ConvNet's) unchanged.

``ridge``: ridge regression of one-hot targets on the features, in closed form and differentiable
(R2-D2, Bertinetto et al. 2019, arXiv 1805.08136), so meta-training shapes the features for it. With
N < F images it solves the N x N system (Woodbury identity), else the F x F one; at prediction time
``HeadMoments`` accumulates the F x F moments chunk by chunk, so the head reads every support image
at a cost linear in N and a memory independent of N.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_means(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, D) rows and (N,) labels -> (K, D) per-class means, in label order."""
    onehot = F.one_hot(labels, num_classes).to(x.dtype)                   # (N, K)
    return onehot.t() @ x / onehot.sum(0).clamp_min(1).unsqueeze(1)


def prototype_from_means(protos: torch.Tensor, tau: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear layer computing -tau * ||f - p_k||^2 up to a term equal for all classes; protos (K, F)."""
    return 2 * tau * protos, -tau * protos.pow(2).sum(1)


def prototype_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   tau: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototype head: p_k is the mean of class k's features (N, F); returns weight (K, F) and bias (K,)."""
    return prototype_from_means(class_means(features, labels, num_classes), tau)


def ridge_output(w: torch.Tensor, mu: torch.Tensor, ybar: torch.Tensor, scale: torch.Tensor | float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients w (F, K) of centred data -> logits = scale * ((f - mu) w + ybar) as weight (K, F), bias (K,)."""
    return (scale * w.t()).to(dtype), (scale * (ybar - mu @ w)).to(dtype)


def ridge_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, log_lambda: torch.Tensor,
               scale: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression of one-hot labels on (N, F) features, with an unpenalised intercept.

    lambda = exp(log_lambda) * mean ||f - mu||^2, so the penalty does not depend on the features' scale.
    Solved in float32 (bf16 has no linear solver); cost O(min(N, F)^2 max(N, F)).
    """
    x = features.float()
    y = F.one_hot(labels, num_classes).float()                              # (N, K)
    mu, ybar = x.mean(0), y.mean(0)
    xc, yc = x - mu, y - ybar
    n, f = xc.shape
    lam = log_lambda.float().exp() * (xc.pow(2).sum() / n).clamp_min(1e-6)   # > 0 even if all rows are equal
    if n < f:   # Woodbury: X^T (X X^T + lam I_N)^-1 Y, an N x N solve
        w = xc.t() @ torch.linalg.solve(xc @ xc.t() + lam * torch.eye(n, device=x.device), yc)
    else:
        w = torch.linalg.solve(xc.t() @ xc + lam * torch.eye(f, device=x.device), xc.t() @ yc)
    return ridge_output(w, mu, ybar, scale, features.dtype)


class HeadMoments:
    """Sufficient statistics of (features, labels) for every head, summed chunk by chunk.

    Memory O(F^2 + F K) whatever N: what lets prediction fit the head on every support image. Features are
    shifted by the first chunk's mean, so each chunk's products are taken in float32 (the costly part) without
    the cancellation of raw second moments, then summed in float64.
    """

    def __init__(self, feature_dim: int, num_classes: int, device: torch.device):
        kw = dict(dtype=torch.float64, device=device)
        self.n, self.num_classes, self.shift = 0, num_classes, None
        self.sum_x, self.xx = torch.zeros(feature_dim, **kw), torch.zeros(feature_dim, feature_dim, **kw)
        self.xy, self.counts = torch.zeros(feature_dim, num_classes, **kw), torch.zeros(num_classes, **kw)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        x = features.float()
        if self.shift is None:
            self.shift = x.mean(0)
        x = x - self.shift
        y = F.one_hot(labels, self.num_classes).float()
        self.n += len(x)
        self.sum_x += x.sum(0, dtype=torch.float64)
        self.xx += x.t() @ x
        self.xy += x.t() @ y
        self.counts += y.sum(0)

    def class_means(self) -> torch.Tensor:
        return (self.xy / self.counts.clamp_min(1)).t().float() + self.shift               # (K, F)

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, ybar, X_c^T X_c, X_c^T Y_c, spread) of all added rows, in float64: mu is the mean of the shifted
        rows (add ``shift`` for the features' mean), spread the mean squared centred norm that scales lambda."""
        mu, ybar = self.sum_x / self.n, self.counts / self.n
        sxx = self.xx - self.n * torch.outer(mu, mu)
        sxy = self.xy - self.n * torch.outer(mu, ybar)
        return mu, ybar, sxx, sxy, (sxx.diagonal().sum() / self.n).clamp_min(1e-6)

    def ridge(self, log_lambda: torch.Tensor, scale: torch.Tensor | float,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The same solution as ``ridge_head`` on all added rows (the F x F form)."""
        mu, ybar, sxx, sxy, spread = self.centred()
        lam = log_lambda.double().exp() * spread
        factor = torch.linalg.cholesky(sxx + lam * torch.eye(len(mu), dtype=sxx.dtype, device=sxx.device))
        w = torch.cholesky_solve(sxy, factor)                               # symmetric positive definite
        return ridge_output(w, mu + self.shift, ybar, scale.double() if torch.is_tensor(scale) else scale, dtype)


def spread_sample(labels: torch.Tensor, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded order of the support rows that visits classes round-robin: (rows (N,), rank within class (N,)).

    The first M rows are a class-stratified random sample of size M; rows with rank < c are a random
    sample of at most c images per class. Depends only on (labels, seed), not on the device.
    """
    y = labels.cpu()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    grouped = perm[torch.argsort(y[perm], stable=True)]                      # by class, random inside
    counts = torch.bincount(y, minlength=num_classes)
    rank = torch.arange(len(y)) - (torch.cumsum(counts, 0) - counts)[y[grouped]]
    order = torch.argsort(rank * num_classes + y[grouped], stable=True)      # rank 0 of every class, then rank 1...
    return grouped[order].to(labels.device), rank[order].to(labels.device)
