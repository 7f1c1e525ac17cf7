"""The whitened first layer (PudNetConfig.whiten_eps): a closed-form dependence of the body on the support set."""
import torch
import torch.nn.functional as F

from pudnet import PudNet, PudNetConfig
from pudnet.model.conditioning import foreign_conditioning
from pudnet.model.hypernetwork import whitened
from pudnet.model.targets import build

SMALL = dict(target_kwargs={"depth": 2, "width": 16}, encoder_width=8, hidden=16, layer_embedding=8, max_classes=6)
CONV = "features.block1.conv.weight"


def support(k, per_class=8, seed=0, colour=(1.0, 0.5, 0.2)):
    """Images whose channels have unequal spread and whose neighbouring pixels correlate (blurred noise)."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(k * per_class, 3, 34, 34, generator=g), 3, 1)
    return x * torch.tensor(colour)[:, None, None], torch.arange(k).repeat_interleave(per_class)


def models(eps: float = 0.01) -> tuple[PudNet, PudNet]:
    """(whitened, plain): the same weights, the first one with the whitened first layer."""
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, whiten_eps=eps)).eval()
    plain = PudNet(PudNetConfig(**SMALL)).eval()
    plain.load_state_dict(model.state_dict())
    return model, plain


def test_whitened_patches_are_decorrelated_with_unit_variance():
    model, _ = models(eps=1e-6)                                    # a floor too low to matter
    x, _ = support(3)
    zca = model.patch_whitening(x, 3)
    patches = F.unfold(x, 3).transpose(1, 2).flatten(0, 1)
    patches = (patches - patches.mean(0)) @ zca
    cov = patches.t() @ patches / len(patches)
    assert torch.allclose(cov, torch.eye(27), atol=1e-3)
    raw = F.unfold(x, 3).transpose(1, 2).flatten(0, 1)
    assert (raw.t().cov() - torch.eye(27)).abs().max() > 0.5       # the raw patches were far from white


def test_the_kernel_is_the_generated_one_on_whitened_patches_and_loads_as_a_plain_conv():
    model, plain = models()
    x, y = support(3)
    with torch.no_grad():
        weights, generated = model(x, y, 3), plain(x, y, 3)
    zca = model.patch_whitening(x, 3)
    assert torch.allclose(weights[CONV], whitened(generated[CONV], zca), atol=1e-6)
    out = F.conv2d(x, weights[CONV])                               # the exported kernel on raw pixels
    on_white = (F.unfold(x, 3).transpose(1, 2) @ zca) @ generated[CONV].flatten(1).t()   # generated on whitened
    assert torch.allclose(out.flatten(2).transpose(1, 2), on_white, atol=1e-4)
    net = build("convnet", 3, **SMALL["target_kwargs"])
    net.load_state_dict(weights)                                   # nothing but a state_dict


def test_the_first_layer_depends_on_the_data_and_the_ablation_feeds_it_other_data():
    model, _ = models()
    (x, y), (ox, oy) = support(3), support(4, seed=1, colour=(0.3, 0.3, 0.3))
    with torch.no_grad():
        own, other = model(x, y, 3), model(ox, oy, 4)
        assert not torch.allclose(own[CONV], other[CONV], atol=1e-3)
        with foreign_conditioning(model, ox, oy, 4, activations=True):
            swapped = model(x, y, 3)
        with foreign_conditioning(model, ox, oy, 4, activations=False):
            sketch_only = model(x, y, 3)
        after = model(x, y, 3)
    assert torch.allclose(swapped[CONV], other[CONV])              # the other data's whitening (and sketch)
    assert not torch.allclose(sketch_only[CONV], other[CONV], atol=1e-3)
    assert all(torch.equal(after[k], own[k]) for k in own)        # restored


def test_gradients_reach_the_generator_through_the_whitened_kernel():
    model, _ = models()
    model.train()
    x, y = support(3)
    model(x, y, 3)[CONV].square().sum().backward()
    assert model.generators["features/block1/conv"].base.grad.abs().sum() > 0
