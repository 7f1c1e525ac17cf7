import pytest
import torch
import torchvision

from pudnet.model import targets


@pytest.mark.parametrize("k", [2, 10])
def test_resnet18_spec_matches_torchvision_state_dict(k):
    reference = torchvision.models.resnet18(weights=None, num_classes=k).state_dict()
    spec = targets.TargetSpec.from_module(targets.resnet18(num_classes=7))   # built for another K
    assert spec.shapes(k) == {name: tuple(t.shape) for name, t in reference.items()}
    assert len(spec.layers) == 41 and spec.head.name == "fc" and spec.feature_dim == 512


def test_convnet_layout_and_forward():
    net = targets.convnet(depth=3, width=64, num_classes=5)
    spec = targets.TargetSpec.from_module(net)
    assert [(l.name, l.kind) for l in spec.layers] == [
        ("features.block1.conv", "conv"), ("features.block1.norm", "norm"),
        ("features.block2.conv", "conv"), ("features.block2.norm", "norm"),
        ("features.block3.conv", "conv"), ("features.block3.norm", "norm"), ("fc", "linear")]
    assert spec.layers[2].weight_shape == (64, 64, 3, 3) and spec.layers[2].fan_in == 576
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="arch='vgg'"):
        targets.build("vgg", 5)
    with pytest.raises(ValueError, match="channels"):
        targets._build_convnet([], 5)
    with pytest.raises(ValueError, match="num_classes"):
        targets.convnet(num_classes=0)


def test_check_names_every_problem():
    spec = targets.TargetSpec.from_module(targets.convnet(num_classes=3))
    state = targets.convnet(num_classes=3).state_dict()
    state["fc.weight"] = torch.zeros(4, 64)
    del state["features.block1.conv.weight"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        spec.check(state, 3)
    msg = str(err.value)
    assert "missing features.block1.conv.weight" in msg and "unexpected extra" in msg and "fc.weight: got (4, 64)" in msg


@pytest.mark.parametrize("arch", ["convnet", "resnet18"])
def test_runner_matches_module_and_support_stats_reproduce_train_mode(arch):
    torch.manual_seed(0)
    runner = targets.TargetRunner(arch, 10)
    net = targets.build(arch, 4)
    params = dict(net.named_parameters())
    x = torch.randn(12, 3, 32, 32)
    stats, features = runner.support_pass(params, x)
    assert features.shape == (12, runner.spec.feature_dim)
    weights = {**{k: v.detach() for k, v in params.items()}, **stats}
    net.load_state_dict(weights)                       # strict: the stats are complete
    with torch.no_grad():
        eval_out = net.eval()(x)
        assert torch.allclose(runner(weights, x), eval_out, atol=1e-3)   # folded norms: rounding only
        assert torch.allclose(net.train()(x), eval_out, atol=1e-3)   # support statistics == batch statistics


@pytest.mark.parametrize("arch", ["convnet", "resnet18"])
def test_support_pass_without_autograd_reads_batch_norms_own_statistics(arch):
    """Prediction takes the statistics batch_norm left in the buffers (no second pass): the same numbers."""
    torch.manual_seed(0)
    runner = targets.TargetRunner(arch, 10)
    params = {k: v.detach() for k, v in targets.build(arch, 4).named_parameters()}
    x = torch.randn(12, 3, 32, 32) * 2 + 1
    with torch.no_grad():
        stats, features = runner.support_pass(params, x)
    params = {k: v.requires_grad_() for k, v in params.items()}
    exact_stats, exact_features = runner.support_pass(params, x)
    assert stats.keys() == exact_stats.keys()
    for name, value in stats.items():
        assert torch.allclose(value, exact_stats[name].detach(), rtol=1e-4, atol=1e-6), name
    assert torch.allclose(features, exact_features.detach(), rtol=1e-4, atol=1e-5)


def test_runner_eval_is_differentiable_in_the_statistics():
    runner = targets.TargetRunner("convnet", 5)
    net = targets.convnet(num_classes=3)
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    mean = weights["features.block2.norm.running_mean"].requires_grad_()
    weights["features.block2.norm.running_mean"] = mean
    runner(weights, torch.randn(4, 3, 32, 32)).sum().backward()
    assert mean.grad is not None and mean.grad.abs().sum() > 0


def test_convnet_pool_keeps_a_spatial_layout_in_the_features():
    net = targets.convnet(depth=3, width=8, num_classes=5, pool=4)
    assert targets.TargetSpec.from_module(net).feature_dim == 8 * 4 * 4
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="pool=0"):
        targets.convnet(pool=0)


def test_runner_is_safe_to_call_from_many_threads():
    from concurrent.futures import ThreadPoolExecutor
    torch.manual_seed(0)
    runner = targets.TargetRunner("convnet", 5, width=8)
    params = dict(targets.convnet(width=8, num_classes=3).named_parameters())
    inputs = [torch.randn(6, 3, 16, 16) for _ in range(16)]
    with torch.no_grad():
        expected = [runner.support_pass(params, x)[1] for x in inputs]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda x: runner.support_pass(params, x)[1], inputs))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def _random_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """net's state_dict with random BatchNorm affines and statistics, so eval mode is not the identity."""
    g = torch.Generator().manual_seed(0)
    state = net.state_dict()
    for name, t in state.items():
        if name.endswith(("running_mean", "bias")) and t.is_floating_point():
            state[name] = 0.1 * torch.randn(t.shape, generator=g)
        elif name.endswith("running_var") or (name.endswith("weight") and t.dim() == 1):
            state[name] = 0.5 + torch.rand(t.shape, generator=g)
    return state


@pytest.mark.parametrize("arch,kwargs,split,names", [
    ("convnet", {"depth": 3, "width": 16, "pool": 2}, 2, ["features.block1", "features.block2", "features.block3",
                                                          "avgpool", "fc"]),
    ("resnet18", {}, 11, ["conv1", "bn1", "relu", "maxpool"] + [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
     + ["avgpool", "fc"])])
def test_split_forward_equals_the_full_forward(arch, kwargs, split, names):
    torch.manual_seed(0)
    net = targets.build(arch, 4, **kwargs)
    runner = targets.TargetRunner(arch, 4, **kwargs)
    assert [name for name, _ in runner.stages] == names
    state, x = _random_state(net), torch.randn(6, 3, 32, 32)
    net.load_state_dict(state)
    with torch.no_grad():
        full = net.eval()(x)
        split_eval = runner.staged(state, runner.staged(state, x, 0, split), split)
        train_features = torch.flatten(runner.staged(state, runner.staged(state, x, 0, split, train=True),
                                                     split, -1, train=True), 1)
        body = {k: v for k, v in state.items() if not k.startswith("fc.") and "running" not in k
                and "num_batches" not in k}
        support_features = runner.support_pass(body, x)[1]
    assert torch.allclose(split_eval, full, atol=1e-4) and torch.allclose(runner(state, x), full, atol=1e-4)
    assert torch.allclose(train_features, support_features, atol=1e-4)   # batch statistics, as the support pass


def test_last_stages_counts_parameterised_body_stages():
    convnet, resnet = targets.TargetRunner("convnet", 3, depth=3, width=8), targets.TargetRunner("resnet18", 3)
    assert [convnet.last_stages(n) for n in (0, 1, 2, 3, 9)] == [0, 2, 1, 0, 0]
    assert [resnet.stages[resnet.last_stages(n)][0] for n in (1, 2)] == ["layer4.1", "layer4.0"]
