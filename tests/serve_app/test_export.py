"""``format=pt2``: the exported program gives the state_dict path's logits, loaded in a process that never
imports pudnet (nor torchvision), for each architecture."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pudnet import PudNet, PudNetConfig, targets
from pudnet.data import to_tensor
from pudnet.predict import predict
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
