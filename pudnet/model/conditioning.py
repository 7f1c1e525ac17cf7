"""Conditioning of the generated body on the support set's own activations (issue 9, item 4).

Why not through the kernels: a per-output-channel scale of a conv kernel is undone exactly by the
BatchNorm after it (BN(s z) = BN(z)), so a sketch entering there cannot change the network. Here the
modulation acts on each BatchNorm's affine instead, after the normalisation, where nothing cancels it.

HyperTransformer-style (Zhmoginov et al. 2022, arXiv 2201.04182): layer l's modulation is computed from
the support activations entering layer l under the already generated (and modulated) layers < l, in the
same sequential support pass that computes the BatchNorm statistics (``TargetRunner.support_pass``).
TADAM-style (Oreshkin et al. 2018, arXiv 1805.10123): the modulation is residual, scaled by learnable
gates that start at zero (so training starts from the unconditioned network) and carry an L2 penalty.
The exported BatchNorm weight and bias already contain the modulation: the state_dict stays torchvision's.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .heads import class_means


def channel_statistics(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-channel class structure of normalised activations z (N, C, H, W) -> (3C,):

    the spread of the class means over classes (how well channel c separates this dataset's classes),
    the mean within-class spread, and the mean absolute class mean, all of spatially pooled activations.
    """
    pooled = z.mean((2, 3))                                                  # (N, C)
    means = class_means(pooled, labels, num_classes)                         # (K, C)
    between = means.std(0, unbiased=False)
    within = (pooled - means[labels]).pow(2).mean(0).clamp_min(1e-8).sqrt()
    return torch.cat([between, within, means.abs().mean(0)])


class ActivationFiLM(nn.Module):
    """One BatchNorm layer's residual FiLM: weight * (1 + g_w tanh(a)), bias + g_b b, with (a, b) from the
    layer's channel statistics and its AHRU state, and learned gates (g_w, g_b).

    The modulation starts at exactly zero through a zero-initialised output layer, with the gates at
    ``gate_init``. Gates at zero (TADAM's init) also zero the gradient of the whole path; in 150 steps of
    the default recipe they did not grow and the conditioning changed no prediction (bench/results_ablations.md).
    """

    def __init__(self, channels: int, hidden: int, gate_init: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * channels + hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.net[-1].weight), nn.init.zeros_(self.net[-1].bias)
        self.gates = nn.Parameter(torch.full((2,), gate_init))

    def forward(self, z: torch.Tensor, labels: torch.Tensor, num_classes: int, state: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (N, C, H, W) normalised input, labels (N,), state (hidden,), weight/bias (C,) -> modulated (C,), (C,)."""
        scale, shift = self.net(torch.cat([channel_statistics(z, labels, num_classes), state])).chunk(2)
        return weight * (1 + self.gates[0] * torch.tanh(scale)), bias + self.gates[1] * shift


@contextlib.contextmanager
def foreign_conditioning(model, x: torch.Tensor, y: torch.Tensor, k: int, activations: bool,
                         statistics: bool = False):
    """The ablation of the conditioning: while inside, ``model`` (a PudNet) generates its body from (x, y) of
    ANOTHER dataset: its sketch, and with ``activations`` its BatchNorm modulations, its first layer's patch
    whitening (``PudNet.patch_whitening``) and its refined body
    (``PudNet.refine_body``, pudnet.model.refine) too. The BatchNorm statistics still come from the support set
    the model is called with, unless ``statistics``: then they are the other dataset's too, and the support set
    only fits the head, on features normalised with them. That measures what the support statistics are worth."""
    recorded, modulation, encode, refine = {}, model.modulation, model.encoder.forward, model.refine_body
    whitening = model.patch_whitening
    support_pass = model.target.support_pass
    def recording(key, fn):
        def call(*args):
            recorded[key] = fn(*args)
            return recorded[key]
        return call
    def replaying(key):
        return lambda *args: recorded[key]
    def record_modulation(name, *args):
        recorded[name] = modulation(name, *args)
        return recorded[name]
    def record_statistics(*args):
        recorded["statistics"], features = support_pass(*args)
        return recorded["statistics"], features
    def foreign_statistics(body, x, modulate=None):
        stats = recorded["statistics"]
        return stats, model.target.features({**body, **stats}, x)
    try:
        model.modulation, model.encoder.forward = record_modulation, recording("sketch", encode)
        model.refine_body, model.patch_whitening = recording("refined", refine), recording("whitening", whitening)
        model.target.support_pass = record_statistics
        with torch.no_grad():
            model(x, y, k)
        model.encoder.forward = replaying("sketch")
        model.modulation = (lambda name, *args: recorded[name]) if activations else modulation
        model.refine_body = replaying("refined") if activations else refine
        model.patch_whitening = replaying("whitening") if activations else whitening
        model.target.support_pass = foreign_statistics if statistics else support_pass
        yield
    finally:
        del model.encoder.forward, model.modulation, model.refine_body, model.patch_whitening
        del model.target.support_pass
