"""``format=pt2``: the generated weights as a self-contained ``torch.export`` program of the target network,
which a user loads with ``torch.export.load`` alone (no pudnet, no torchvision), for every architecture.

The program takes normalised images (B, 3, R, R), B free, exactly as the state_dict path's model does, and
returns logits (B, K); the response metadata (class names, normalisation) rides along as an extra file.
"""
from __future__ import annotations

import io
import json

import torch

from pudnet.model import targets
from pudnet.model.config import PudNetConfig
from pudnet.model.predict import Prediction

METADATA_FILE = "metadata.json"   # torch.export.load(f, extra_files={"metadata.json": ""}) reads it back


def exported_program(prediction: Prediction, cfg: PudNetConfig, metadata: dict[str, str]) -> bytes:
    """The target built, loaded strictly with the generated weights, put in eval mode, exported and saved."""
    net = targets.build(cfg.arch, int(metadata["num_classes"]), **cfg.target_kwargs)
    net.load_state_dict(prediction.state_dict)
    net.eval()
    example = torch.zeros(2, 3, cfg.image_size, cfg.image_size)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(metadata)})
    return buffer.getvalue()
