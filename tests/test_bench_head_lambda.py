"""bench/head_lambda.py's ridge path: each head is the one the prediction fits (pudnet.model.heads.ridge_head), and
its GCV score is the textbook one, computed from the hat matrix, with more images than features and fewer."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.head_lambda import RidgePath, lambda_sweep  # noqa: E402
from pudnet.model.heads import ridge_head  # noqa: E402


def data(n: int, f: int, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat(n // k)
    return (2 * torch.randn(k, f, generator=g))[labels] + 3 * torch.randn(len(labels), f, generator=g), labels


def brute_force_gcv(x: torch.Tensor, labels: torch.Tensor, k: int, log_lambda: float) -> tuple[float, float]:
    """(n |Y - H Y|^2 / (n - tr H)^2, tr H) with the explicit n x n hat matrix of ridge with an unpenalised
    intercept."""
    x, y = x.double(), F.one_hot(labels, k).double()
    n = len(x)
    xc = x - x.mean(0)
    lam = np.exp(log_lambda) * float(xc.pow(2).sum() / n)
    hat = xc @ torch.linalg.solve(xc.t() @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype), xc.t()) + 1.0 / n
    return float(n * (y - hat @ y).pow(2).sum() / (n - hat.trace()) ** 2), float(hat.trace())


@pytest.mark.parametrize("n, f", [(200, 30), (40, 60)])       # more images than features, and fewer (S=10 here)
def test_each_head_is_the_predictions_ridge_head_and_gcv_is_the_hat_matrix_one(n, f):
    x, labels = data(n, f)
    path = RidgePath(x, labels, 4)
    for log_lambda in (-3.0, -0.29, 0.0, 2.5):
        weight, bias = ridge_head(x, labels, 4, torch.tensor(log_lambda), 1.0)
        mine = path.head(log_lambda)
        assert torch.allclose(mine[0], weight, atol=1e-4) and torch.allclose(mine[1], bias, atol=1e-4)
        expected, dof = brute_force_gcv(x, labels, 4, log_lambda)
        if n - dof >= 1:
            assert path.gcv(log_lambda) == pytest.approx(expected, rel=1e-3)
        else:                                                                   # nearly interpolates: undefined
            assert path.gcv(log_lambda) is None
    assert any(path.gcv(g) is not None for g in (-3.0, -0.29, 0.0, 2.5))


def test_the_sweep_scores_the_refit_heads_and_gcv_picks_a_lambda_that_fits():
    x, labels = data(200, 30)
    test, test_labels = data(400, 30, seed=0)
    test = test + 0.1 * torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
    grid = np.arange(-6.0, 6.01, 1.0)
    sweep = lambda_sweep(x, labels, test, test_labels, 4, grid, learned=-0.29)
    weight, bias = ridge_head(x, labels, 4, torch.tensor(-0.29), 1.0)
    assert sweep["refit_learned"] == float(((test @ weight.t() + bias).argmax(1) == test_labels).float().mean())
    assert 0 < sweep["gcv_pick"] < len(grid) - 1                               # noisy data: neither end of the grid
