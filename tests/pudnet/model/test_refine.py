"""The body's refinement by its split-half support loss (pudnet.model.refine)."""
import pytest
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.model.conditioning import foreign_conditioning
from pudnet.model.refine import BodyRefinement, split_half_loss
from pudnet.model.targets import build

SMALL = dict(target_kwargs={"depth": 2, "width": 16}, encoder_width=8, hidden=16, layer_embedding=8, max_classes=6)


def support(k, per_class=4, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k * per_class, 3, 32, 32, generator=g) + shift, torch.arange(k).repeat_interleave(per_class)


def refined(alpha: float, **kw) -> PudNet:
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, refine_steps=1, **kw)).eval()
    with torch.no_grad():
        model.refine.alpha.fill_(alpha)
    return model


def test_zero_steps_are_the_unrefined_network_and_keys_load_into_the_target():
    plain = PudNet(PudNetConfig(**SMALL)).eval()
    model = refined(0.0)
    model.load_state_dict(plain.state_dict(), strict=False)             # the same generator, alpha = 0
    x, y = support(3)
    with torch.no_grad():
        a, b = model(x, y, 3), plain(x, y, 3)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    build("convnet", 3, **SMALL["target_kwargs"]).load_state_dict(a)       # strict: torchvision-style keys


def test_step_moves_every_body_tensor_by_alpha_times_its_layers_weight_scale():
    x, y = support(3)
    with torch.no_grad():
        before, after = refined(0.0)(x, y, 3), refined(0.1)(x, y, 3)
    rms = lambda t: t.pow(2).mean().sqrt().item()
    for name in refined(0.0).refine.names:
        weight = before[name.rsplit(".", 1)[0] + ".weight"]
        assert rms(after[name] - before[name]) == pytest.approx(0.1 * rms(weight), rel=1e-3), name


def test_refinement_lowers_the_split_half_loss_and_depends_on_the_data():
    model = refined(0.02)
    (x, y), (ox, oy) = support(3, per_class=8), support(3, per_class=8, seed=1, shift=1.0)
    half = torch.arange(8).repeat(3) % 2 == 1
    def loss(weights):
        return split_half_loss(model.target.support_pass(weights, x)[1], y, half, 3, model.log_lambda,
                               model.log_scale.exp())
    with torch.no_grad():
        own = model(x, y, 3)
        with foreign_conditioning(model, ox, oy, 3, activations=True):
            foreign = model(x, y, 3)
        model.refine.alpha.zero_()
        plain = model(x, y, 3)
    name = "features.block1.conv.weight"
    assert not torch.allclose(own[name], foreign[name], atol=1e-4)       # the body reads the data
    body = lambda w: {k: v for k, v in w.items() if not k.startswith("fc.")}
    assert loss(body(own)) < loss(body(plain))


def test_step_sizes_get_a_meta_gradient_from_zero():
    model = refined(0.0).train()
    x, y = support(3)
    weights = model(x, y, 3)
    torch.nn.functional.cross_entropy(model.target(weights, x), y).backward()
    assert model.refine.alpha.grad.abs().min() > 0


def test_refine_per_class_is_checked():
    with pytest.raises(ValueError, match="refine_per_class"):
        PudNetConfig(refine_per_class=1)
    with pytest.raises(ValueError, match="refine_steps"):
        PudNetConfig(refine_steps=-1)
    with pytest.raises(ValueError, match="refine_layers"):
        PudNetConfig(refine_layers=-1)


def test_step_sizes_start_at_alpha_init():
    model = PudNet(PudNetConfig(**SMALL, refine_steps=2, refine_alpha_init=0.05))
    assert model.refine.alpha.shape == (2, 6) and torch.all(model.refine.alpha == 0.05)


def test_one_image_per_class_leaves_the_body_unrefined():
    x, y = support(3, per_class=1)
    with torch.no_grad():
        a, b = refined(0.1)(x, y, 3), refined(0.0)(x, y, 3)
    assert all(torch.isfinite(a[k]).all() and torch.allclose(a[k], b[k]) for k in a)


def test_last_stage_refinement_changes_only_the_last_stage_and_reads_the_data():
    (x, y), (ox, oy) = support(3, per_class=8), support(3, per_class=8, seed=1, shift=1.0)
    with torch.no_grad():
        plain = refined(0.0, refine_layers=1)(x, y, 3)
        model = refined(0.1, refine_layers=1)
        own = model(x, y, 3)
        with foreign_conditioning(model, ox, oy, 3, activations=True):
            foreign = model(x, y, 3)
    last = {"features.block2.conv.weight", "features.block2.norm.weight", "features.block2.norm.bias"}
    assert set(model.refine.names) == last and model.refine.alpha.shape == (1, 3)
    body = [k for k in plain if k.startswith("features.") and "running" not in k and "num_batches" not in k]
    assert {k for k in body if not torch.allclose(own[k], plain[k])} == last
    assert not torch.allclose(own["features.block2.conv.weight"], foreign["features.block2.conv.weight"], atol=1e-4)


def test_zero_steps_are_the_identity():
    body = {"conv.weight": torch.randn(4, 3, 3, 3)}
    out = BodyRefinement(["conv.weight"], steps=0)(body, lambda w: w["conv.weight"].sum())
    assert out.keys() == body.keys() and torch.equal(out["conv.weight"], body["conv.weight"])


def test_step_sizes_stay_at_or_above_the_floor():
    refinement = BodyRefinement(["conv.weight"], steps=2, alpha_init=0.05, alpha_min=0.05)
    with torch.no_grad():
        refinement.alpha.copy_(torch.tensor([[-0.1], [0.2]]))
    assert refinement.step_sizes().flatten().tolist() == pytest.approx([0.05, 0.2])
    assert BodyRefinement(["conv.weight"], steps=1, alpha_init=-0.1).step_sizes().item() == pytest.approx(-0.1)
