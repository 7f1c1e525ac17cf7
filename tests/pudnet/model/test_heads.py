import pytest
import torch
import torch.nn.functional as F

from pudnet.model.heads import HeadMoments, prototype_head, ridge_head, spread_sample


def problem(n, f, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    return torch.randn(n, f, generator=g, dtype=torch.float64) + 3 * F.one_hot(labels % f, f).double(), labels


def reference(x, labels, k, log_lambda, scale):
    """Ridge with an unpenalised intercept by plain least squares on the stacked system [Xc; sqrt(lam) I]."""
    y = F.one_hot(labels, k).double()
    mu, ybar = x.mean(0), y.mean(0)
    xc, yc = x - mu, y - ybar
    lam = torch.exp(torch.tensor(log_lambda, dtype=torch.float64)) * xc.pow(2).sum() / len(x)
    a = torch.cat([xc, lam.sqrt() * torch.eye(x.shape[1], dtype=torch.float64)])
    b = torch.cat([yc, torch.zeros(x.shape[1], k, dtype=torch.float64)])
    w = torch.linalg.lstsq(a, b).solution
    return scale * w.t(), scale * (ybar - mu @ w)


@pytest.mark.parametrize("n,f", [(6, 9), (30, 5)])     # the Woodbury (N < F) and the primal (N >= F) branch
def test_ridge_matches_a_least_squares_reference(n, f):
    x, labels = problem(n, f, 3)
    weight, bias = ridge_head(x, labels, 3, torch.tensor(-1.0), 2.0)
    ref_w, ref_b = reference(x, labels, 3, -1.0, 2.0)
    assert torch.allclose(weight.double(), ref_w, atol=1e-4) and torch.allclose(bias.double(), ref_b, atol=1e-4)
    assert weight.dtype == torch.float64 and weight.shape == (3, f) and bias.shape == (3,)


@pytest.mark.parametrize("n,f", [(6, 9), (30, 5)])
def test_moments_in_chunks_give_the_same_head(n, f):
    x, labels = problem(n, f, 4, seed=1)
    moments = HeadMoments(f, 4, x.device)
    for rows in torch.arange(n).split(4):
        moments.add(x[rows].float(), labels[rows])
    weight, bias = moments.ridge(torch.tensor(0.5), torch.tensor(3.0), torch.float32)
    ref_w, ref_b = ridge_head(x, labels, 4, torch.tensor(0.5), 3.0)
    assert torch.allclose(weight.double(), ref_w, atol=1e-4) and torch.allclose(bias.double(), ref_b, atol=1e-4)
    protos = prototype_head(x.float(), labels, 4, 1.0)[0] / 2
    assert torch.allclose(moments.class_means(), protos, atol=1e-5)


def test_moments_of_features_far_from_zero_keep_their_precision():
    """Products are taken in float32 after a shift: raw second moments of features at 1000 +- 1 would cancel."""
    x, labels = problem(400, 8, 4, seed=2)
    x = x + 1000
    moments = HeadMoments(8, 4, x.device)
    for rows in torch.arange(400).split(64):
        moments.add(x[rows].float(), labels[rows])
    weight, bias = moments.ridge(torch.tensor(-2.0), torch.tensor(3.0), torch.float32)
    ref_w, ref_b = reference(x, labels, 4, -2.0, 3.0)
    assert torch.allclose(weight.double(), ref_w, atol=1e-3) and torch.allclose(bias.double(), ref_b, atol=1e-1)
    logits, ref_logits = x.float() @ weight.t() + bias, x @ ref_w.t() + ref_b
    assert torch.allclose(logits.double(), ref_logits, atol=1e-3)


def test_ridge_head_fits_separable_data_and_scales_to_many_classes():
    k = 1000
    x, labels = problem(2 * k, 64, k)
    x = torch.cat([x, F.one_hot(labels, k).double()], 1).float()        # (2000, 1064): one feature per class
    weight, bias = ridge_head(x, labels, k, torch.tensor(-4.0), 1.0)
    assert weight.shape == (k, 1064) and bias.shape == (k,)
    assert ((x @ weight.t() + bias).argmax(1) == labels).float().mean() == 1.0


def test_gradients_reach_features_lambda_and_scale():
    x, labels = problem(8, 12, 3)
    x = x.float().requires_grad_()
    log_lambda, log_scale = torch.tensor(0.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)
    weight, bias = ridge_head(x, labels, 3, log_lambda, log_scale.exp())
    F.cross_entropy(x @ weight.t() + bias, labels).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (x, log_lambda, log_scale))


def test_spread_sample_is_seeded_stratified_and_capped():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    rows, rank = spread_sample(labels, 3, seed=5)
    again, _ = spread_sample(labels, 3, seed=5)
    assert torch.equal(rows, again) and not torch.equal(rows, spread_sample(labels, 3, seed=6)[0])
    assert sorted(rows.tolist()) == list(range(20))
    assert sorted(labels[rows[:6]].tolist()) == [0, 0, 1, 1, 2, 2]     # the first M rows: classes in turn
    capped = labels[rows[rank < 2]]
    assert torch.bincount(capped).tolist() == [2, 2, 2]


def test_identical_features_give_a_finite_head():
    weight, bias = ridge_head(torch.ones(4, 6), torch.tensor([0, 1, 0, 1]), 2, torch.tensor(0.0), 1.0)
    assert torch.isfinite(weight).all() and torch.allclose(bias, torch.tensor([0.5, 0.5]))
