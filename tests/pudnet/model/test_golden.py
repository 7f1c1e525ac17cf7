"""Golden outputs (torchvision's ``test/expect`` idea): a seeded tiny PudNet's generated weights and the target's
logits on a fixed batch must equal the stored ones, so a change that moves any number is seen.

After an intended change of the numbers, rewrite the file and say why in the commit:
    PUDNET_WRITE_EXPECT=1 python -m pytest tests/pudnet/model/test_golden.py
"""
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pudnet import PudNet, PudNetConfig

EXPECT = Path(__file__).parent / "expect" / "tiny_pudnet.safetensors"
TINY = dict(target_kwargs={"depth": 2, "width": 8}, encoder_width=4, hidden=8, layer_embedding=4, max_classes=4,
            image_size=16)


def outputs(head: str) -> dict[str, torch.Tensor]:
    """Seed 0 init, a seeded 3-way 4-shot support set of 16 px images, 6 query images: weights and logits."""
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(**TINY, head=head)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(12, 3, 16, 16, generator=g), torch.arange(3).repeat_interleave(4)
    query = torch.rand(6, 3, 16, 16, generator=g)
    with torch.no_grad():
        weights = model(x, y, 3)
        logits = model.target(weights, query)
    return {**{f"{head}/weights/{k}": v.float() for k, v in weights.items()}, f"{head}/logits": logits.float()}


@pytest.fixture(scope="module")
def actual() -> dict[str, torch.Tensor]:
    got = {k: v for head in ("ridge", "prototype", "generated") for k, v in outputs(head).items()}
    if os.environ.get("PUDNET_WRITE_EXPECT"):
        save_file({k: v.contiguous() for k, v in got.items()}, EXPECT)
    return got


def test_generated_weights_and_logits_match_the_stored_ones(actual):
    expected = load_file(EXPECT)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_the_logits_depend_on_the_query_images(actual):
    """The stored logits are not a constant: the fixture would catch a target that ignores its input."""
    for head in ("ridge", "prototype", "generated"):
        logits = actual[f"{head}/logits"]
        assert logits.shape == (6, 3) and (logits - logits.mean(0)).abs().max() > 1e-4, head
