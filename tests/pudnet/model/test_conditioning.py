"""Conditioning on support activations (pudnet.model.conditioning) and the shared meta-training recipe (pudnet.model.recipe)."""
import types

import pytest
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.model.conditioning import channel_statistics, foreign_conditioning
from pudnet.model.recipe import lr_factor, optimizer_and_schedule
from pudnet.model.targets import build

SMALL = dict(target_kwargs={"depth": 2, "width": 16}, encoder_width=8, hidden=16, layer_embedding=8, max_classes=6)


def support(k, per_class=4, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k * per_class, 3, 32, 32, generator=g) + shift, torch.arange(k).repeat_interleave(per_class)


def conditioned(gate: float) -> PudNet:
    """A conditioned model whose modulation is switched on (its output layer starts at zero) and gated by ``gate``."""
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, conditioning="activations")).eval()
    with torch.no_grad():
        for film in model.film.values():
            film.gates.fill_(gate)
            film.net[-1].weight.normal_(0, 0.1)
    return model


def test_conditioning_starts_as_the_identity():
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, conditioning="activations")).eval()
    x, y = support(3)
    with torch.no_grad():
        weights = model(x, y, 3)
    assert all(f.gates.min().item() == 1.0 for f in model.film.values())
    for name in ("features.block1.norm", "features.block2.norm"):     # the generated affine starts at (1, 0)
        assert torch.equal(weights[f"{name}.weight"], torch.ones(16)) and torch.equal(weights[f"{name}.bias"],
                                                                                   torch.zeros(16))


def test_channel_statistics_expected_numbers():
    z = torch.tensor([1.0, 3.0, -1.0, -3.0]).view(4, 1, 1, 1)            # classes 0, 0, 1, 1; one channel
    stats = channel_statistics(z, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(stats, torch.tensor([2.0, 1.0, 2.0]))         # between, within, mean |class mean|


def test_zero_gates_give_the_unconditioned_network():
    model = conditioned(0.0)
    plain = PudNet(PudNetConfig(**SMALL)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)             # the same parameters, no FiLM
    x, y = support(3)
    with torch.no_grad():
        a, b = model(x, y, 3), plain(x, y, 3)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)


def test_modulated_weights_export_as_torchvision_state_dict_and_reproduce_the_support_pass():
    """The FiLM is folded into the BatchNorm affine: eval mode on the exported state_dict equals the pass."""
    model = conditioned(0.5)
    x, y = support(3)
    with torch.no_grad():
        weights = model(x, y, 3)
        body = {k: v for k, v in weights.items() if not k.startswith("fc.")}
        _, pass_features = model.target.support_pass(body, x, lambda name, z: (weights[f"{name}.weight"],
                                                                             weights[f"{name}.bias"]))
        net = build("convnet", 3, **SMALL["target_kwargs"])
        net.load_state_dict(weights)                                     # strict: exactly the module's keys
        logits = net.eval()(x)
    assert torch.allclose(model.target.features(body, x), pass_features, atol=1e-4)
    assert torch.allclose(logits, model.target(weights, x), rtol=1e-3, atol=1e-3)


def test_modulation_depends_on_the_support_activations():
    model = conditioned(0.5)
    (x, y), (ox, oy) = support(3), support(3, seed=1, shift=1.0)
    with torch.no_grad():
        a, b = model(x, y, 3), model(ox, oy, 3)
    norm = "features.block1.norm.weight"
    assert not torch.allclose(a[norm], b[norm], atol=1e-4)


def test_gate_penalty_and_gradients_reach_the_conditioning_path():
    model = conditioned(0.5).train()
    x, y = support(3)
    weights = model(x, y, 3)
    (model.target(weights, x).logsumexp(1).mean() + model.penalty()).backward()
    film = next(iter(model.film.values()))
    assert film.gates.grad.abs().sum() > 0 and film.net[0].weight.grad.abs().sum() > 0
    assert film.net[-1].weight.grad.abs().sum() > 0
    assert model.penalty().item() == pytest.approx(model.cfg.gate_penalty * 0.25 * 2 * len(model.film))


def test_recipe_puts_base_kernels_in_a_slower_group_and_warms_up():
    model = PudNet(PudNetConfig(**SMALL))
    cfg = types.SimpleNamespace(lr=1e-3, base_lr_scale=0.1, weight_decay=0.0, steps=100, warmup_steps=10,
                                lr_schedule="cosine")
    optimizer, _ = optimizer_and_schedule(model, cfg)
    rest, base = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[1] for p in base["params"]} == {"base", "u", "v"}
    assert len(rest["params"]) + len(base["params"]) == len(list(model.parameters()))
    assert base["lr"] == pytest.approx(0.1 * rest["lr"]) and rest["lr"] == pytest.approx(1e-4)   # warm-up step 0
    assert lr_factor(50, 100, 0, "cosine") == pytest.approx(0.5) and lr_factor(7, 100, 0, "constant") == 1.0


NORM = "features.block1.norm"


def foreign_run(statistics: bool) -> tuple[dict, dict, dict, dict]:
    """(own, other, swapped, after): a 3-way prediction, a 4-way one on other data, the 3-way one inside
    foreign_conditioning with the other data, and the 3-way one again afterwards."""
    model = conditioned(0.5)
    (x, y), (ox, oy) = support(3), support(4, seed=1, shift=1.0)
    with torch.no_grad():
        own, other = model(x, y, 3), model(ox, oy, 4)
        with foreign_conditioning(model, ox, oy, 4, activations=True, statistics=statistics):
            swapped = model(x, y, 3)
        after = model(x, y, 3)
    return own, other, swapped, after


def test_foreign_conditioning_swaps_the_body_only_and_restores_the_model():
    own, other, swapped, after = foreign_run(statistics=False)
    assert torch.allclose(swapped[f"{NORM}.weight"], other[f"{NORM}.weight"])          # the other data's body
    assert torch.allclose(swapped[f"{NORM}.running_mean"], own[f"{NORM}.running_mean"])  # this data's statistics
    assert swapped["fc.weight"].shape == (3, 16)                                          # this data's head
    assert all(torch.equal(after[k], own[k]) for k in own)


def test_foreign_statistics_swap_the_batchnorm_statistics_too_and_the_head_still_fits_this_data():
    own, other, swapped, after = foreign_run(statistics=True)
    for key in (f"{NORM}.running_mean", f"{NORM}.running_var", f"{NORM}.weight"):
        assert torch.allclose(swapped[key], other[key])                                  # the other data's
    assert swapped["fc.weight"].shape == (3, 16) and not torch.allclose(swapped["fc.weight"], own["fc.weight"])
    assert all(torch.equal(after[k], own[k]) for k in own)                               # restored
