"""``format=pt2``: the exported program gives the state_dict path's logits, loaded in a process that never
imports pudnet (nor torchvision), for each architecture."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from pudnet import PudNet, PudNetConfig

from pudnet.model import targets
from pudnet.data.tasks import to_tensor
from pudnet.model.predict import predict
from serve_app.export import exported_program

LOADER = """
import json, sys, torch
extra = {"metadata.json": ""}
program = torch.export.load(sys.argv[1], extra_files=extra)
x = torch.load(sys.argv[2], weights_only=True)
torch.save(program.module()(x), sys.argv[3])
assert not any(m.split(".")[0] in ("pudnet", "torchvision", "serve_app") for m in sys.modules), "imported our code"
print(json.loads(extra["metadata.json"])["architecture"])
"""


@pytest.mark.parametrize("arch,kwargs", [("convnet", {"depth": 2, "width": 8}), ("resnet18", {})])
def test_pt2_matches_the_state_dict_in_a_clean_process(arch, kwargs, tmp_path):
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(arch=arch, target_kwargs=kwargs, encoder_width=8, hidden=16, layer_embedding=8,
                                max_classes=3, lowrank=2)).eval()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), np.arange(12) % 3
    prediction = predict(model, images, labels, ("a", "b", "c"))
    (tmp_path / "w.pt2").write_bytes(exported_program(prediction, model.cfg, prediction.metadata))
    x = to_tensor(images[:5], model.cfg.mean, model.cfg.std)
    torch.save(x, tmp_path / "x.pt")
    net = targets.build(arch, 3, **kwargs)
    net.load_state_dict(prediction.state_dict)
    with torch.no_grad():
        expected = net.eval()(x)
    run = subprocess.run([sys.executable, "-I", "-c", LOADER, str(tmp_path / "w.pt2"), str(tmp_path / "x.pt"),
                          str(tmp_path / "y.pt")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == arch
    torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_lean_weights_keep_batchnorm_statistics_float32(dtype):
    """A cast response, streamed as the server streams it, loads into a float32 target with load_state_dict and
    gives nearly the same logits."""
    from safetensors.torch import load
    from serve_app.streaming import SafetensorsStream
    torch.manual_seed(0)
    net = targets.build("convnet", 3, depth=2, width=8)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = net.state_dict()
    lean = load(b"".join(SafetensorsStream(state, {}, getattr(torch, dtype), chunk_bytes=256)))
    assert all(v.dtype == torch.float32 for k, v in lean.items() if k.endswith(("running_mean", "running_var")))
    assert all(v.dtype == getattr(torch, dtype) for k, v in lean.items()
               if v.is_floating_point() and not k.endswith(("running_mean", "running_var")))
    assert all(lean[k].dtype == v.dtype for k, v in state.items() if not v.is_floating_point())
    loaded = targets.build("convnet", 3, depth=2, width=8)
    loaded.load_state_dict(lean)  # copies cast back into the float32 parameters
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), net.eval()(x), rtol=0.05, atol=0.05)
