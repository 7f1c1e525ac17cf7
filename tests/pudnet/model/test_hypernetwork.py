import pytest
import torch
import torchvision

from pudnet import PudNet, PudNetConfig
from pudnet.model.hypernetwork import ConvKernelGenerator, class_means

SMALL = dict(target_kwargs={"depth": 2, "width": 16}, encoder_width=8, hidden=16, layer_embedding=8, max_classes=6)


def support(k, per_class=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k * per_class, 3, size, size, generator=g), torch.arange(k).repeat_interleave(per_class)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PudNet(PudNetConfig(**SMALL)).eval()


def test_class_means_expected_numbers():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    assert torch.equal(class_means(x, torch.tensor([0, 0, 1]), 3), torch.tensor([[2.0, 3.0], [10.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("k", range(2, 7))
def test_generated_shapes_for_every_k(model, k):
    x, y = support(k)
    with torch.no_grad():
        weights = model(x, y, k)
    model.target.spec.check(weights, k)                    # raises naming any wrong entry
    assert weights["fc.weight"].shape == (k, 16) and all(torch.isfinite(w).all() for w in weights.values())


def test_rejects_k_outside_the_supported_range(model):
    x, y = support(7)
    with pytest.raises(ValueError, match="supports 2..6"):
        model(x, y, 7)


def test_permuting_support_images_changes_nothing(model):
    x, y = support(4)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(x, y, 4), model(x[perm], y[perm], 4)
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


@pytest.mark.parametrize("head", ["ridge", "prototype", "generated"])
def test_permuting_class_labels_permutes_head_rows_only(head):
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, head=head)).eval()
    x, y = support(5)
    relabel = torch.tensor([3, 0, 4, 1, 2])                 # class c becomes class relabel[c]
    with torch.no_grad():
        a, b = model(x, y, 5), model(x, relabel[y], 5)
    for name in a:
        expected = a[name]
        if name.startswith("fc."):
            expected = torch.empty_like(a[name])
            expected[relabel] = a[name]
        assert torch.allclose(expected.float(), b[name].float(), atol=1e-5), name


@pytest.mark.parametrize("refine", [{}, {"refine_steps": 1, "refine_alpha_init": 0.05},
                                    {"refine_steps": 2, "refine_alpha_init": 0.05, "refine_layers": 2}],
                         ids=["plain", "refined", "refined layer4"])
def test_generated_resnet18_loads_into_torchvision_and_runs_in_eval_mode(refine):
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(arch="resnet18", target_kwargs={}, encoder_width=8, hidden=16,
                                layer_embedding=8, max_classes=10, **refine)).eval()
    x, y = support(3, per_class=4)
    with torch.no_grad():
        weights = model(x, y, 3)
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(weights)                            # strict
    with torch.no_grad():
        logits = net.eval()(x)
    assert logits.shape == (12, 3) and torch.isfinite(logits).all()
    assert torch.allclose(logits, model.target(weights, x), atol=1e-3)


def test_kernel_generator_has_no_per_weight_output_layer():
    gen = ConvKernelGenerator((512, 512, 3, 3), hidden=128, rank=8, modulation=0.5)
    biggest_output = max(m.out_features for m in gen.modules() if isinstance(m, torch.nn.Linear))
    assert biggest_output == 1024                           # C_out + C_in, not C_out * C_in * 9
    with torch.no_grad():
        kernel = gen(torch.zeros(128))
    assert torch.equal(kernel, gen.base)                    # zero-initialised heads start at the He-scaled base
    assert abs(kernel.std().item() - (2 / 4608) ** 0.5) < 2e-3


def test_gradients_reach_every_hypernetwork_parameter():
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, head="generated")).train()
    x, y = support(3)
    for _ in range(2):  # zero-initialised heads get gradients once their inputs move
        weights = model(x, y, 3)
        torch.nn.functional.cross_entropy(model.target(weights, x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad if p.grad is not None else 0
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("k", [2, 7, 40])
def test_ridge_head_resnet18_loads_into_torchvision_for_many_k(k):
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(arch="resnet18", target_kwargs={}, encoder_width=8, hidden=16, layer_embedding=8,
                                max_classes=1000, head="ridge")).eval()
    x, y = support(k, per_class=2, size=16)
    with torch.no_grad():
        weights = model(x, y, k)
    net = torchvision.models.resnet18(num_classes=k)
    net.load_state_dict(weights)                            # strict
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), model.target(weights, x), atol=1e-3)


def test_ridge_head_gets_gradients_and_fits_its_support_set():
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, head="ridge")).train()
    x, y = support(4, per_class=3)                         # N = 12 < F = 16: the Woodbury branch
    weights = model(x, y, 4)
    logits = model.target(weights, x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert model.log_lambda.grad.abs() > 0 and model.log_scale.grad.abs() > 0
    with torch.no_grad():
        model.log_lambda.fill_(-8.0)                       # nearly no penalty: the fit interpolates
        assert (model.target(model(x, y, 4), x).argmax(1) == y).all()


def counting(module, seen):
    """Record how many images each call of ``module`` receives."""
    return module.register_forward_pre_hook(lambda m, inputs: seen.append(len(inputs[0])))


@pytest.mark.parametrize("head", ["ridge", "prototype"])
def test_sketch_and_statistics_read_a_capped_seeded_sample_and_the_head_reads_everything(head):
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, head=head, sketch_per_class=4, stats_images=8)).eval()
    assert model.chunk_images(4) == 16
    encoded, normed = [], []
    counting(model.encoder.cnn, encoded)
    counting(model.target.module.get_submodule("features.block1.norm"), normed)
    outputs = []
    for per_class in (10, 40):                             # the sample's cost does not grow with N
        x, y = support(3, per_class=per_class)
        encoded.clear(), normed.clear()
        with torch.no_grad():
            outputs.append(model(x, y, 3, memory_mb=4))   # chunks of 16
        assert sum(encoded) == 12 and normed[0] == 8 and sum(normed) == 3 * per_class
        with torch.no_grad():
            again = model(x, y, 3, memory_mb=4)
        assert all(torch.equal(again[k], outputs[-1][k]) for k in again)       # seeded
        with torch.no_grad():
            other = model(x, y, 3, memory_mb=4, seed=1)
        assert not torch.equal(other["features.block1.norm.running_mean"],
                               outputs[-1]["features.block1.norm.running_mean"])


def test_chunks_cut_the_sketch_and_head_passes_but_not_the_statistics_sample():
    """chunk_images bounds the passes that may be cut; the statistics sample is seen at once (memory_mb bounds it)."""
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, sketch_per_class=4, stats_images=8, chunk_images=4)).eval()
    assert model.chunk_images(4) == 4 and model.memory_images(4) == 16
    encoded, normed = [], []
    counting(model.encoder.cnn, encoded)
    counting(model.target.module.get_submodule("features.block1.norm"), normed)
    x, y = support(3, per_class=10)
    with torch.no_grad():
        model(x, y, 3, memory_mb=4)
    assert sum(encoded) == 12 and max(encoded) == 4
    assert normed[0] == 8 and max(normed[1:]) == 4 and sum(normed) == 30


def test_streamed_head_equals_the_differentiable_one_and_pixels_equal_normalised_input():
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**SMALL, head="ridge", stats_images=16)).eval()
    pixels = torch.randint(0, 256, (60, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(60) % 5
    x = (pixels.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        streamed = model(pixels, y, 5, memory_mb=4)        # HeadMoments over chunks of 16
    exact = model(x, y, 5, memory_mb=4)                     # autograd on: features concatenated, ridge_head
    for name in exact:
        assert torch.allclose(streamed[name], exact[name].detach(), atol=1e-4, rtol=1e-4), name
