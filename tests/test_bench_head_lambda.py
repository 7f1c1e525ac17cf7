"""bench/head_lambda.py's sweep: each grid point is the head the prediction fits (pudnet.model.heads.ridge_head),
and generalised cross-validation picks a lambda that fits, not one at an end of the grid."""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.head_lambda import lambda_sweep  # noqa: E402
from pudnet.model.heads import ridge_head  # noqa: E402


def test_every_grid_point_is_the_predictions_ridge_head_and_gcv_picks_inside_the_grid():
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(4, 30, generator=g)
    labels, test_labels = torch.arange(4).repeat(50), torch.arange(4).repeat(100)
    features = centres[labels] + 3 * torch.randn(200, 30, generator=g)          # noisy: too little lambda overfits
    test = centres[test_labels] + 3 * torch.randn(400, 30, generator=g)
    grid = np.arange(-6.0, 6.01, 1.0)
    sweep = lambda_sweep(features, labels, test, test_labels, 4, grid)
    for i in (0, 6, 12):
        weight, bias = ridge_head(features, labels, 4, torch.tensor(grid[i]), 1.0)
        expected = float(((test @ weight.t() + bias).argmax(1) == test_labels).float().mean())
        assert abs(sweep["accuracy"][i] - expected) < 1e-6
    assert 0 < sweep["gcv_pick"] < len(grid) - 1 and np.isfinite(sweep["gcv"]).all()
    assert sweep["accuracy"][sweep["gcv_pick"]] > 0.8
