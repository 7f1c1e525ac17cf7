"""PudNet: generate a target ConvNet's weights from a labelled dataset in one forward pass.

Our reading of "Learning to Generate Parameters of ConvNets for Unseen Image Data"
(Wang et al., arXiv 2310.11862), in the paper's three parts:

1. ``DatasetEncoder`` (the dataset sketch): support images -> one embedding per class
   (permutation-invariant over images, in the dataset's class order) and a pooled sketch.
2. ``AdaptiveHyperRecurrentUnit`` (AHRU): one GRU cell, shared by all layers, walks the target
   layer by layer; its input at every step re-injects the sketch ("adaptive"), so layer l's
   weights depend on the dataset and on layers < l.
3. Per-layer weight generators, one class per parameter kind. A conv kernel is a learned
   fan-in-scaled base modulated by generated per-channel scales plus a generated rank-r term,
   so no generator emits C_out*C_in*k*k numbers (the official code spends 41.6 M generator
   parameters on ResNet-18's 21.9 M weights this way).

BatchNorm statistics come from one pass of the generated body over (a sample of) the support set; with
``conditioning="activations"`` the same pass also modulates every BatchNorm affine from the support
activations entering it (``pudnet.model.conditioning``), the path by which the body depends on the data
(``whiten_eps`` adds another: the first conv layer then acts on the support set's whitened patches);
the classifier head is then fitted to every support image's features in closed form (``ridge``,
see ``pudnet.model.heads``), built from class means (``prototype``), or generated from class k's sketch
embedding (``generated``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conditioning import ActivationFiLM
from .config import PudNetConfig
from pudnet.data.tasks import normalize
from .heads import HeadMoments, class_means, prototype_from_means, prototype_head, ridge_head, spread_sample
from .refine import BodyRefinement, split_half_loss
from .targets import KINDS, LayerSpec, TargetRunner


WHITEN_IMAGES = 128      # the first layer's patch statistics come from a class-stratified sample this large


class DatasetEncoder(nn.Module):
    """The dataset sketch: a small CNN per image, averaged per class, pooled over classes."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, hidden))
        self.per_image = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden))
        self.pool = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) -> per-image embeddings (N, hidden); chunks of images may be embedded apart."""
        return self.per_image(self.cnn(x))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """per-image embeddings (N, hidden), labels (N,) -> class embeddings (K, hidden), sketch (hidden,)."""
        classes = class_means(embeddings, labels, num_classes)                  # (K, hidden)
        sketch = self.pool(torch.cat([classes.mean(0), classes.std(0, unbiased=False)]))
        return classes, sketch


class AdaptiveHyperRecurrentUnit(nn.Module):
    """One GRU cell shared across layers; the sketch conditions its start state and every step."""

    def __init__(self, layer_embedding: int, hidden: int):
        super().__init__()
        self.start = nn.Linear(hidden, hidden)
        self.cell = nn.GRUCell(layer_embedding + hidden, hidden)
        self.adapt = nn.Linear(hidden, 2 * hidden)

    def forward(self, layers: torch.Tensor, sketch: torch.Tensor) -> torch.Tensor:
        """layers (L, E) descriptor embeddings, sketch (hidden,) -> per-layer states (L, hidden)."""
        h = torch.tanh(self.start(sketch)).unsqueeze(0)                      # (1, hidden)
        gamma, beta = self.adapt(sketch).chunk(2)
        out = []
        for layer in layers:
            h = self.cell(torch.cat([layer, sketch]).unsqueeze(0), h)
            out.append(h[0] * (1 + gamma) + beta)
        return torch.stack(out)


def layer_descriptors(layers: tuple[LayerSpec, ...]) -> torch.Tensor:
    """(L, len(KINDS) + 4) features that tell the AHRU where it is in the target."""
    rows = []
    for i, layer in enumerate(layers):
        kernel = layer.weight_shape[-1] if layer.kind == "conv" else 1
        rows.append([float(layer.kind == k) for k in KINDS] + [
            math.log2(layer.fan_in) / 10, math.log2(layer.fan_out) / 10, kernel / 7, i / max(len(layers) - 1, 1)])
    return torch.tensor(rows)


class ConvKernelGenerator(nn.Module):
    """kernel = base * (1 + m tanh(s_out)) (1 + m tanh(s_in)) + U diag(a) V, with s and a generated."""

    def __init__(self, shape: tuple[int, ...], hidden: int, rank: int, modulation: float):
        super().__init__()
        c_out, c_in = shape[:2]
        fan_in = math.prod(shape[1:])
        self.shape, self.modulation = shape, modulation
        self.base = nn.Parameter(torch.randn(shape) * math.sqrt(2.0 / fan_in))   # He init: fan-in aware
        self.scales = nn.Linear(hidden, c_out + c_in)
        nn.init.zeros_(self.scales.weight), nn.init.zeros_(self.scales.bias)
        self.rank = rank
        if rank:
            self.u = nn.Parameter(torch.randn(c_out, rank) / math.sqrt(rank))
            self.v = nn.Parameter(torch.randn(rank, fan_in) * math.sqrt(2.0 / fan_in))
            self.coef = nn.Linear(hidden, rank)
            nn.init.zeros_(self.coef.weight), nn.init.zeros_(self.coef.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s_out, s_in = (1 + self.modulation * torch.tanh(self.scales(h))).split(self.shape[:2])
        kernel = self.base * s_out[:, None, None, None] * s_in[None, :, None, None]
        if self.rank:
            kernel = kernel + ((self.u * self.coef(h)) @ self.v).view(self.shape)
        return kernel


class NormAffineGenerator(nn.Module):
    """BatchNorm weight = 1 + generated, bias = generated (both start at the identity)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.affine = nn.Linear(hidden, 2 * channels)
        nn.init.zeros_(self.affine.weight), nn.init.zeros_(self.affine.bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.affine(h).chunk(2)
        return 1 + scale, shift


class PudNet(nn.Module):
    """Hypernetwork: (support images, labels) -> a full state_dict of the target network."""

    def __init__(self, cfg: PudNetConfig):
        super().__init__()
        self.cfg = cfg
        self.target = TargetRunner(cfg.arch, cfg.max_classes, **cfg.target_kwargs)
        spec = self.target.spec
        self.register_buffer("descriptors", layer_descriptors(spec.layers), persistent=False)
        self.encoder = DatasetEncoder(cfg.encoder_width, cfg.hidden)
        self.embed_layer = nn.Sequential(nn.Linear(self.descriptors.shape[1], cfg.layer_embedding), nn.ReLU(),
                                         nn.Linear(cfg.layer_embedding, cfg.layer_embedding))
        self.ahru = AdaptiveHyperRecurrentUnit(cfg.layer_embedding, cfg.hidden)
        self.generators = nn.ModuleDict()
        for layer in spec.body:
            key = layer.name.replace(".", "/")
            if layer.kind == "conv" and not layer.has_bias:
                self.generators[key] = ConvKernelGenerator(layer.weight_shape, cfg.hidden, cfg.lowrank, cfg.modulation)
            elif layer.kind == "norm" and layer.has_bias:
                self.generators[key] = NormAffineGenerator(layer.weight_shape[0], cfg.hidden)
            else:
                raise ValueError(f"{layer.name}: no generator for a {layer.kind} layer "
                                 f"{'with' if layer.has_bias else 'without'} bias inside the body")
        if cfg.conditioning == "activations":
            self.film = nn.ModuleDict({layer.name.replace(".", "/"): ActivationFiLM(layer.weight_shape[0], cfg.hidden)
                                       for layer in spec.body if layer.kind == "norm"})
        if cfg.refine_steps:
            refined = tuple(f"{name}." for name, _ in self.target.stages[self.target.last_stages(cfg.refine_layers):])
            names = [f"{layer.name}.{p}" for layer in spec.body if f"{layer.name}.".startswith(refined)
                     for p in ("weight", "bias")[:1 + (layer.kind == "norm")]]
            self.refine = BodyRefinement(names, cfg.refine_steps, cfg.refine_alpha_init, cfg.refine_alpha_min)
        if cfg.head == "ridge":       # lambda relative to the features' spread, and the logits' scale, learned
            self.log_lambda = nn.Parameter(torch.tensor(0.0))
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        elif cfg.head == "prototype":  # logits = -tau ||f - p_k||^2 (+ a class-independent term), tau learned
            self.log_tau = nn.Parameter(torch.tensor(math.log(10.0 / spec.feature_dim)))
        else:
            self.head_rows = nn.Sequential(nn.Linear(2 * cfg.hidden, cfg.hidden), nn.ReLU(),
                                           nn.Linear(cfg.hidden, spec.feature_dim + 1))
        if cfg.aux_weight:   # training only, built last so every other initial weight is as without it
            if not cfg.aux_classes:
                raise ValueError("model.aux_weight > 0 needs model.aux_classes, the meta-train class count "
                                 "(jobs/train.py and pudnet.model.recipe.meta_train_local set it)")
            self.aux_head = nn.Linear(spec.feature_dim, cfg.aux_classes)
            nn.init.zeros_(self.aux_head.weight), nn.init.zeros_(self.aux_head.bias)   # no noise into the body at first

    def memory_images(self, memory_mb: int | None = None) -> int:
        """How many images one pass holds under ``memory_mb`` (default cfg.memory_mb): the bound on a batch that
        must be seen at once (the BatchNorm statistics sample, a refinement step)."""
        r = self.cfg.image_size
        per_image = max(self.target.activation_bytes(r), 16 * self.cfg.encoder_width * r * r)  # encoder: 4x its conv1
        return max(1, ((memory_mb or self.cfg.memory_mb) << 20) // per_image)

    def chunk_images(self, memory_mb: int | None = None) -> int:
        """Images per chunk of a pass that may be cut (the sketch, the head's features): ``cfg.chunk_images``, or
        fewer under ``memory_mb``."""
        return min(self.cfg.chunk_images, self.memory_images(memory_mb))

    def _inputs(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Model inputs for ``rows`` of x (all if None); uint8 (N, R, R, 3) pixels are normalised here."""
        x = x if rows is None else x[rows]
        return normalize(x, self.cfg.mean, self.cfg.std) if x.dtype == torch.uint8 else x

    def forward(self, x: torch.Tensor, labels: torch.Tensor, num_classes: int, *, memory_mb: int | None = None,
                seed: int = 0) -> dict[str, torch.Tensor]:
        """Generate a K-way target.

        Cost and memory stay linear in N and bounded (issue 12): the dataset encoder reads at most
        ``cfg.sketch_per_class`` images per class, and the BatchNorm statistics come from one pass over a
        class-stratified sample of at most ``cfg.stats_images`` images (and what ``memory_mb`` holds); with
        ``cfg.refine_steps``, each refinement step reads at most ``cfg.refine_per_class`` images per class (and
        what ``memory_mb`` holds); all samples are seeded by ``seed``. The head then reads every image, in
        chunks of ``chunk_images``; without autograd only the head's F x F moments are kept
        (``pudnet.model.heads.HeadMoments``).

        Args:
            x: (N, 3, R, R) normalised support images, or (N, R, R, 3) uint8 pixels (normalised chunk by chunk).
            labels: (N,) int64 in [0, K); every class must have at least one image.
            num_classes: K, 2..cfg.max_classes.
        Returns:
            The target's full state_dict (weights, BatchNorm statistics from ``x``, K-row head).
        """
        if not 2 <= num_classes <= self.cfg.max_classes:
            raise ValueError(f"num_classes={num_classes}: this model supports 2..{self.cfg.max_classes}")
        memory, chunk = self.memory_images(memory_mb), self.chunk_images(memory_mb)
        order, rank = spread_sample(labels, num_classes, seed)
        sketch_rows = order[rank < self.cfg.sketch_per_class] if rank.max() >= self.cfg.sketch_per_class else None
        n_stats = min(self.cfg.stats_images, memory)
        stats_rows = order[:n_stats] if len(labels) > n_stats else None
        embeddings = torch.cat([self.encoder.embed(self._inputs(x, rows))
                                for rows in _chunks(sketch_rows, len(x), chunk)])                 # (n_sketch, d)
        sketch_labels = labels if sketch_rows is None else labels[sketch_rows]
        class_emb, sketch = self.encoder(embeddings, sketch_labels, num_classes)
        states = self.ahru(self.embed_layer(self.descriptors), sketch)            # (L, d)
        body = {}
        for layer, h in zip(self.target.spec.body, states):
            generated = self.generators[layer.name.replace(".", "/")](h)
            if layer.kind == "conv":
                body[f"{layer.name}.weight"] = generated
            else:
                body[f"{layer.name}.weight"], body[f"{layer.name}.bias"] = generated
        if self.cfg.whiten_eps:
            name = f"{self.target.spec.body[0].name}.weight"
            body[name] = whitened(body[name], self.patch_whitening(self._inputs(x, order[:WHITEN_IMAGES]),
                                                                   body[name].shape[-1]))
        if self.cfg.refine_steps:
            body = self.refine_body(body, x, labels, num_classes, order, rank, memory)
        sample_labels = labels if stats_rows is None else labels[stats_rows]
        modulate = None
        if self.cfg.conditioning == "activations":
            state_of = {layer.name: h for layer, h in zip(self.target.spec.body, states)}
            modulate = lambda name, z: self.modulation(name, z, sample_labels, num_classes, state_of[name],
                                                       body[f"{name}.weight"], body[f"{name}.bias"])
        stats, features = self.target.support_pass(body, self._inputs(x, stats_rows), modulate)  # (n_stats, F)
        weights = {**body, **stats}
        if self.cfg.head == "generated":
            rows = self.head_rows(torch.cat([class_emb, states[-1].expand_as(class_emb)], 1))
            weight, bias = rows[:, :-1], rows[:, -1]
        else:
            rest = None if stats_rows is None else order[n_stats:]
            weight, bias = self._fit_head(weights, features, sample_labels, x, labels, rest, num_classes, chunk)
        head = self.target.spec.head.name
        weights.update({f"{head}.weight": weight, f"{head}.bias": bias})
        self.target.spec.check(weights, num_classes)
        return weights

    @torch.no_grad()
    def patch_whitening(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """The ZCA matrix (d, d) of x's size x size input patches (d = 3 size^2, in a conv kernel's flattened
        order), eigenvalues floored by ``cfg.whiten_eps`` of their mean; one method, so an ablation can feed it
        another dataset. Decorrelating the first layer's input is something BatchNorm after it cannot do, and patch
        statistics are one place where datasets differ at low level (strokes, textures, colour)."""
        patches = F.unfold(x, size).transpose(1, 2).flatten(0, 1).double()      # (N * positions, d)
        patches = patches - patches.mean(0)
        eigenvalues, vectors = torch.linalg.eigh(patches.t() @ patches / len(patches))
        floor = self.cfg.whiten_eps * eigenvalues.clamp_min(0).mean()
        return ((vectors * (eigenvalues.clamp_min(0) + floor).rsqrt()) @ vectors.t()).to(x.dtype)

    def modulation(self, name: str, z: torch.Tensor, labels: torch.Tensor, num_classes: int, state: torch.Tensor,
                   weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Norm layer ``name``'s (weight, bias) from its normalised support input z (N, C, H, W) with ``labels``
        (pudnet.model.conditioning); one method, so an ablation can feed it another dataset's activations."""
        return self.film[name.replace(".", "/")](z, labels, num_classes, state, weight, bias)

    def refine_body(self, body: dict[str, torch.Tensor], x: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    order: torch.Tensor, rank: torch.Tensor, memory: int) -> dict[str, torch.Tensor]:
        """The body after ``cfg.refine_steps`` steps on its split-half ridge loss over at most
        ``cfg.refine_per_class`` images per class (and at most ``memory``) of x, halves by the seeded rank's parity
        (pudnet.model.refine); one method, so an ablation can feed it another dataset. With ``cfg.refine_layers``
        the stages before the refined ones run once, without autograd, and each step recomputes only the rest."""
        n = min(int((rank < self.cfg.refine_per_class).sum()), memory)     # order is by rank: a stratified prefix
        rows = order[:n]
        half = rank[:n] % 2 == 1
        if half.all() or not half.any():                                    # one image per class: no split
            return body
        start, head = self.target.last_stages(self.cfg.refine_layers), len(self.target.stages) - 1
        with torch.no_grad():       # the activations entering the first refined stage (the images if start = 0)
            sx = self.target.staged(body, self._inputs(x, rows), 0, start, train=True)
        sy = labels[rows]
        if self.cfg.head == "ridge":
            log_lambda, scale = self.log_lambda.detach(), self.log_scale.detach().exp()
        else:
            log_lambda, scale = torch.zeros((), device=x.device), torch.full((), 10.0, device=x.device)

        def loss(weights):
            features = torch.flatten(self.target.staged(weights, sx, start, head, train=True), 1)
            return split_half_loss(features, sy, half, num_classes, log_lambda, scale)
        return self.refine(body, loss)

    def penalty(self) -> torch.Tensor | float:
        """The L2 penalty on the conditioning gates (TADAM), added to the meta-training loss."""
        if self.cfg.conditioning != "activations":
            return 0.0
        return self.cfg.gate_penalty * sum(film.gates.pow(2).sum() for film in self.film.values())

    def _fit_head(self, weights: dict[str, torch.Tensor], features: torch.Tensor, sample_labels: torch.Tensor,
                  x: torch.Tensor, labels: torch.Tensor, rest: torch.Tensor | None, num_classes: int,
                  chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ridge or prototype head on every support image: ``features`` (with ``sample_labels``) of the
        statistics sample, plus the features of the ``rest`` rows of x, computed in eval mode in chunks."""
        if rest is not None and not torch.is_grad_enabled():   # prediction: stream the rest into F x F moments
            moments = HeadMoments(features.shape[1], num_classes, features.device)
            moments.add(features, sample_labels)
            for rows in _chunks(rest, len(x), chunk):
                moments.add(self.target.features(weights, self._inputs(x, rows)), labels[rows])
            if self.cfg.head == "ridge":
                return moments.ridge(self.log_lambda, self.log_scale.exp(), features.dtype)
            return prototype_from_means(moments.class_means().to(features.dtype), self.log_tau.exp())
        if rest is not None:
            features = torch.cat([features] + [self.target.features(weights, self._inputs(x, rows))
                                               for rows in _chunks(rest, len(x), chunk)])
            sample_labels = torch.cat([sample_labels, labels[rest]])
        if self.cfg.head == "ridge":
            return ridge_head(features, sample_labels, num_classes, self.log_lambda, self.log_scale.exp())
        return prototype_head(features, sample_labels, num_classes, self.log_tau.exp())


def whitened(kernel: torch.Tensor, zca: torch.Tensor) -> torch.Tensor:
    """The conv kernel that applies ``kernel`` to ZCA-whitened patches: one kernel, so it loads as it is."""
    return (kernel.flatten(1) @ zca).view_as(kernel)


def _chunks(rows: torch.Tensor | None, n: int, size: int) -> list[torch.Tensor | slice]:
    """``rows`` (all n rows if None) cut into pieces of at most ``size``."""
    if rows is None:
        return [slice(i, i + size) for i in range(0, n, size)]
    return list(rows.split(size))
