"""Target networks whose weights PudNet generates, and their parameter layout.

The builders return ordinary modules whose ``state_dict`` keys are the contract: generated
weights for ``resnet18`` load into ``torchvision.models.resnet18`` with ``load_state_dict``.
``TargetSpec`` is the one place that derives each layer's name, kind and shape, from the
module itself rather than from hand-written tables.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torchvision
from torch.func import functional_call

KINDS = ("conv", "norm", "linear")
_KIND_OF = {nn.Conv2d: "conv", nn.BatchNorm2d: "norm", nn.Linear: "linear"}


class ConvNet(nn.Module):
    """conv3x3 -> norm -> ReLU -> maxpool blocks, average pool to pool x pool, flatten, linear head.

    ``pool`` > 1 keeps a coarse spatial layout in the features (as the Conv-4 backbone of few-shot
    learning does by flattening); ``pool`` = 1 is global average pooling as in ResNet.
    """

    def __init__(self, channels: list[int], num_classes: int, norm_layer: Callable[[int], nn.Module], pool: int):
        super().__init__()
        blocks, c_in = OrderedDict(), 3
        for i, c_out in enumerate(channels, start=1):
            blocks[f"block{i}"] = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm=norm_layer(c_out),
                relu=nn.ReLU(inplace=True), pool=nn.MaxPool2d(2)))
            c_in = c_out
        self.features = nn.Sequential(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Linear(c_in * pool * pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def _build_convnet(channels: list[int], num_classes: int, pool: int = 1,
                   norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> ConvNet:
    if not channels or min(channels) < 1:
        raise ValueError(f"channels={channels}: expected a non-empty list of positive widths")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: expected >= 1")
    if pool < 1:
        raise ValueError(f"pool={pool}: expected >= 1")
    return ConvNet(channels, num_classes, norm_layer, pool)


def convnet(depth: int = 3, width: int = 64, num_classes: int = 10, pool: int = 1) -> ConvNet:
    """The embedded-default target: ``depth`` blocks of ``width`` channels, for 28-32 px input."""
    return _build_convnet([width] * depth, num_classes, pool)


def resnet18(num_classes: int = 1000) -> nn.Module:
    """Exactly torchvision's ResNet-18 (random init, nothing downloaded)."""
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


BUILDERS: dict[str, Callable[..., nn.Module]] = {"convnet": convnet, "resnet18": resnet18}


def build(arch: str, num_classes: int, **kwargs) -> nn.Module:
    if arch not in BUILDERS:
        raise ValueError(f"arch={arch!r}: expected one of {sorted(BUILDERS)}")
    return BUILDERS[arch](num_classes=num_classes, **kwargs)


def stages(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The target as a sequence of stages whose composition is its forward (flattened before the linear head):
    its top-level children, a ``Sequential`` child counting as its own children (a ConvNet block, a ResNet
    ``BasicBlock``). ``TargetRunner.staged`` runs a prefix or a suffix of them."""
    out = []
    for name, child in module.named_children():
        out += ([(f"{name}.{n}", c) for n, c in child.named_children()] if isinstance(child, nn.Sequential)
                else [(name, child)])
    return out


@dataclass(frozen=True)
class LayerSpec:
    """One module that owns parameters, in forward (registration) order."""

    name: str                  # module path, e.g. "layer1.0.conv1"
    kind: str                  # one of KINDS
    weight_shape: tuple[int, ...]
    has_bias: bool

    @property
    def fan_in(self) -> int:
        return 1 if self.kind == "norm" else int(torch.tensor(self.weight_shape[1:]).prod())

    @property
    def fan_out(self) -> int:
        return self.weight_shape[0]


@dataclass(frozen=True)
class TargetSpec:
    """Names, kinds and shapes of a target's parameters and buffers.

    The last layer must be the linear classifier head; its row count is the class count K
    and is the only shape that changes between sub-datasets.
    """

    layers: tuple[LayerSpec, ...]
    buffers: tuple[tuple[str, tuple[int, ...], torch.dtype], ...]

    @classmethod
    def from_module(cls, module: nn.Module) -> "TargetSpec":
        layers = []
        for name, sub in module.named_modules():
            own = dict(sub.named_parameters(recurse=False))
            if not own:
                continue
            kind = _KIND_OF.get(type(sub))
            if kind is None:
                raise ValueError(f"{name}: {type(sub).__name__} has parameters but no generator kind ({KINDS})")
            layers.append(LayerSpec(name, kind, tuple(own["weight"].shape), "bias" in own))
        if not layers or layers[-1].kind != "linear":
            raise ValueError("the last parameterised layer must be the linear classifier head")
        buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers())
        return cls(tuple(layers), buffers)

    @property
    def head(self) -> LayerSpec:
        return self.layers[-1]

    @property
    def body(self) -> tuple[LayerSpec, ...]:
        return self.layers[:-1]

    @property
    def feature_dim(self) -> int:
        return self.head.weight_shape[1]

    def shapes(self, num_classes: int) -> dict[str, tuple[int, ...]]:
        """Every state_dict entry's shape for a K-way target."""
        out = {}
        for layer in self.layers:
            weight = (num_classes, *layer.weight_shape[1:]) if layer is self.head else layer.weight_shape
            out[f"{layer.name}.weight"] = weight
            if layer.has_bias:
                out[f"{layer.name}.bias"] = (num_classes,) if layer is self.head else (weight[0],)
        out.update({name: shape for name, shape, _ in self.buffers})
        return out

    def check(self, state: dict[str, torch.Tensor], num_classes: int) -> None:
        """Raise naming every missing, unexpected or mis-shaped entry."""
        expected = self.shapes(num_classes)
        problems = [f"missing {k}" for k in expected if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in expected]
        problems += [f"{k}: got {tuple(state[k].shape)}, expected {s}"
                     for k, s in expected.items() if k in state and tuple(state[k].shape) != s]
        if problems:
            raise ValueError("generated weights do not match the target: " + "; ".join(problems))


class TargetRunner:
    """Runs a target architecture functionally (``torch.func.functional_call``) on given weights.

    The module lives on the meta device: it holds structure only, every tensor comes from
    the weights passed in. Forward hooks read BatchNorm inputs and the head's input during a
    support pass. ``functional_call`` swaps tensors into the one shared module, so calls hold a
    lock: concurrent callers (threads of a Serve replica) are safe and run one at a time.
    """

    def __init__(self, arch: str, num_classes: int, **kwargs):
        with torch.device("meta"):
            self.module = build(arch, num_classes, **kwargs)
        self.spec = TargetSpec.from_module(self.module)
        self._lock = threading.Lock()
        self._stats: dict | None = None          # armed by support_pass, filled by the hooks
        self._features: torch.Tensor | None = None
        self._capture = False                    # the head's pre-hook keeps its input while set
        self._modulate: Callable | None = None   # support_pass's per-norm-layer affine, while armed
        self._activation_bytes: dict[int, int] = {}
        self.stages = stages(self.module)
        self._norms = [(name, sub) for name, sub in self.module.named_modules() if isinstance(sub, nn.BatchNorm2d)]
        for name, sub in self._norms:
            sub.momentum = 1.0   # a train-mode pass leaves in the running buffers the statistics it normalised with
            sub.register_forward_hook(self._norm_hook(name))
        self.module.get_submodule(self.spec.head.name).register_forward_pre_hook(self._head_hook)

    def _norm_hook(self, name: str):
        def hook(module, inputs, output):
            if self._stats is None:
                return None
            x = inputs[0]   # biased variance: eval() on the support set then equals train()
            if torch.is_grad_enabled():  # meta-training: statistics differentiable; var() keeps no extra activation
                mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
            else:  # prediction: batch_norm's own statistics (momentum 1), unbiased; no second pass over x
                n = x.numel() // x.shape[1]
                mean, var = module.running_mean, module.running_var * ((n - 1) / n)
            self._stats[f"{name}.running_mean"], self._stats[f"{name}.running_var"] = mean, var
            if self._modulate is None:
                return None
            z = (x - mean[:, None, None]) * torch.rsqrt(var + module.eps)[:, None, None]   # (N, C, H, W)
            weight, bias = self._modulate(name, z)     # this layer's affine, from the activations entering it
            self._stats[f"{name}.weight"], self._stats[f"{name}.bias"] = weight, bias
            return z * weight[:, None, None] + bias[:, None, None]
        return hook

    def _head_hook(self, module, inputs):
        if self._capture:
            self._features = inputs[0]

    def _folded(self, weights: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
        """Each norm layer's statistics folded into its affine parameters (mean 0, variance 1 left in the
        buffers): the same function, but differentiable in the statistics, which eval-mode ``batch_norm`` is not.
        Only the norm layers under ``prefixes``."""
        folded = dict(weights)
        for name, norm in self._norms:
            if not f"{name}.".startswith(prefixes):
                continue
            mean, var = weights[f"{name}.running_mean"], weights[f"{name}.running_var"]
            scale = weights[f"{name}.weight"] * torch.rsqrt(var + norm.eps) * (1 + norm.eps) ** 0.5
            folded[f"{name}.weight"], folded[f"{name}.bias"] = scale, weights[f"{name}.bias"] - mean * scale
            folded[f"{name}.running_mean"], folded[f"{name}.running_var"] = torch.zeros_like(mean), torch.ones_like(var)
        return folded

    def __call__(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) in eval mode: BatchNorm uses the running statistics in ``weights``."""
        folded = self._folded(weights)
        with self._lock:
            self.module.eval()
            return functional_call(self.module, folded, (x,))

    def last_stages(self, count: int) -> int:
        """Index of the first of the body's last ``count`` stages that hold parameters (0: the whole body)."""
        owners = [i for i, (_, stage) in enumerate(self.stages[:-1]) if next(stage.parameters(), None) is not None]
        return owners[-count] if 0 < count < len(owners) else 0

    def staged(self, weights: dict[str, torch.Tensor], x: torch.Tensor, start: int = 0, stop: int | None = None,
               train: bool = False) -> torch.Tensor:
        """Stages ``start:stop`` (``self.stages``) on x, the activations entering stage ``start``, functionally.

        ``weights`` needs only those stages' tensors. train: BatchNorm normalises with x's own batch statistics
        (as ``support_pass``; no buffers read); else eval mode with the statistics in ``weights``.
        """
        chosen = self.stages[start:stop]
        prefixes = tuple(f"{name}." for name, _ in chosen)
        if train:
            params = {k: v for k, v in weights.items() if k.startswith(prefixes)}
            # train-mode BatchNorm updates running statistics in place: throwaway buffers keep the module's own
            # (shared by every thread's call) untouched
            params.update({name: torch.zeros(shape, dtype=dtype, device=x.device) for name, shape, dtype
                           in self.spec.buffers if name.startswith(prefixes)})
        else:
            params = self._folded({k: v for k, v in weights.items() if k.startswith(prefixes)}, prefixes)
        with self._lock:
            self.module.train(train)
            for name, stage in chosen:
                x = torch.flatten(x, 1) if isinstance(stage, nn.Linear) else x
                own = {k[len(name) + 1:]: v for k, v in params.items() if k.startswith(f"{name}.")}
                x = functional_call(stage, own, (x,))
        return x

    def _dummy_head(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        head = self.spec.head
        dummy = {f"{head.name}.weight": x.new_zeros(1, self.spec.feature_dim)}
        if head.has_bias:
            dummy[f"{head.name}.bias"] = x.new_zeros(1)
        return dummy

    def features(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Head-input features (N, F) in eval mode; ``weights`` holds the body and its statistics, no head."""
        folded = {**self._folded(weights), **self._dummy_head(x)}
        with self._lock:
            self._capture = True
            try:
                self.module.eval()
                functional_call(self.module, folded, (x,))
                return self._features
            finally:
                self._capture, self._features = False, None

    def activation_bytes(self, image_size: int) -> int:
        """Working memory one image needs in a forward pass without autograd: 4x its largest activation
        (a layer's input and output, BatchNorm's temporaries, a residual branch), in float32."""
        if image_size not in self._activation_bytes:
            self._activation_bytes[image_size] = self._largest_activation(image_size) * 4 * 4
        return self._activation_bytes[image_size]

    def _largest_activation(self, image_size: int) -> int:
        """Elements of the largest tensor one image produces, from a pass on the meta device (no compute)."""
        largest = [3 * image_size * image_size]
        hooks = [m.register_forward_hook(lambda mod, i, out: largest.append(out[0].numel()))
                 for m in self.module.modules() if not list(m.children())]
        try:
            with torch.no_grad(), self._lock:
                self.module.eval()
                self.module(torch.empty(1, 3, image_size, image_size, device="meta"))
        finally:
            for h in hooks:
                h.remove()
        return max(largest)

    def support_pass(self, body: dict[str, torch.Tensor], x: torch.Tensor,
                     modulate: Callable | None = None) -> tuple[dict, torch.Tensor]:
        """BatchNorm statistics of ``x`` and head-input features (N, F) under ``body`` weights.

        Runs in train mode so each norm layer normalises with ``x``'s own statistics,
        differentiably; the returned statistics make eval mode reproduce exactly this pass.
        ``modulate(name, z)``, if given, returns norm layer ``name``'s (weight, bias) from its normalised
        input z (N, C, H, W) in this same sequential pass, so later layers see (and their statistics
        follow) the modulated activations; those affines are returned with the statistics, under
        the layer's own ``.weight``/``.bias`` keys.
        """
        dummy = self._dummy_head(x)
        buffers = {name: torch.zeros(shape, dtype=dtype, device=x.device) for name, shape, dtype in self.spec.buffers}
        with self._lock:
            self._stats, self._capture, self._modulate = {}, True, modulate
            try:
                self.module.train()
                functional_call(self.module, {**body, **buffers, **dummy}, (x,))
                stats, features = self._stats, self._features
            finally:
                self._stats, self._features, self._capture, self._modulate = None, None, False, None
        stats.update({name: torch.ones((), dtype=dtype, device=x.device)
                      for name, _, dtype in self.spec.buffers if name.endswith("num_batches_tracked")})
        return stats, features
