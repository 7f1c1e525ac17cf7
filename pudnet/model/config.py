"""PudNetConfig: everything needed to rebuild a hypernetwork, stored inside every checkpoint."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from pudnet.overrides import CONFIG, from_dict

ARCHITECTURES = ("convnet", "resnet18")
HEADS = ("ridge", "prototype", "generated")
CONDITIONINGS = ("none", "activations")


@dataclass(frozen=True)
class PudNetConfig:
    """The hypernetwork and the target it generates (nanoGPT's GPTConfig, for PudNet).

    ``target_kwargs`` go to the target builder (``pudnet.model.targets.build``), e.g.
    ``{"depth": 3, "width": 64}`` for ``convnet``.
    """

    __pydantic_config__ = CONFIG        # unknown keys raise (pudnet.overrides)

    arch: str = "convnet"               # target network: one of ARCHITECTURES
    target_kwargs: dict = field(default_factory=lambda: {"depth": 3, "width": 64, "pool": 4})
    max_classes: int = 20               # largest K a generated head supports
    image_size: int = 32                # images are (image_size, image_size, 3)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel normalisation applied to [0, 1] pixels
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    encoder_width: int = 32             # channels of the dataset-sketch image encoder
    hidden: int = 128                   # AHRU state and sketch size
    layer_embedding: int = 32           # size of each target layer's descriptor embedding
    lowrank: int = 8                    # rank of the generated additive kernel term (0 disables it)
    modulation: float = 0.5             # max relative change the generated channel scales apply to a kernel
    head: str = "ridge"                 # classifier head: ridge fit on support features, class prototypes, or
                                        # generated from class embeddings (pudnet.model.heads)
    conditioning: str = "none"          # "activations": gated FiLM of every BatchNorm affine from the support
                                        # activations entering it (pudnet.model.conditioning); "none": sketch only
    gate_penalty: float = 1e-3          # L2 penalty on those gates (TADAM)
    aux_weight: float = 0.0             # > 0: auxiliary co-training (TADAM): a linear classifier over all meta-train
                                        # classes on the generated body's query features, its loss times this
    aux_classes: int = 0                # its class count: jobs/train.py sets it to the meta-train classes
    refine_steps: int = 0               # > 0: that many learned, normalised gradient steps on the generated body
                                        # by its split-half ridge loss on the support set (pudnet.model.refine)
    refine_per_class: int = 32          # the refinement reads at most this many support images per class
    refine_alpha_init: float = 0.0      # the refinement's learned step sizes start here (0: the unrefined body)
    refine_alpha_min: float | None = None  # a floor under the learned step sizes (None: none), so that
                                        # meta-training cannot shrink the refinement away
    refine_layers: int = 0              # > 0: refine only the body's last that many stages (a ConvNet block, a
                                        # ResNet BasicBlock), the earlier ones run once; 0: the whole body
    whiten_eps: float = 0.0             # > 0: the first conv layer's generated kernel acts on the support set's
                                        # ZCA-whitened input patches (eigenvalues floored by this share of their
                                        # mean), a closed-form dependence of the body on the data; 0: off
    sketch_per_class: int = 16          # the dataset encoder reads at most this many support images per class
    stats_images: int = 128             # BatchNorm statistics come from at most this many support images
    chunk_images: int = 64              # passes that may be cut (the sketch, the head's features, scoring) take at
                                        # most this many images at a time: small chunks stay in a CPU's cache
                                        # (half the time per image of 512 at 32 px); a GPU may want more
    memory_mb: int = 512                # what must be seen at once (the statistics sample, a refinement step), and
                                        # every chunk, holds at most the images whose activations fit in this

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch={self.arch!r}: expected one of {ARCHITECTURES}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={self.conditioning!r}: expected one of {CONDITIONINGS}")
        if self.aux_weight < 0 or self.aux_classes < 0:
            raise ValueError(f"aux_weight={self.aux_weight}, aux_classes={self.aux_classes}: expected >= 0")
        if self.gate_penalty < 0:
            raise ValueError(f"gate_penalty={self.gate_penalty}: expected >= 0")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps={self.refine_steps}: expected >= 0")
        if self.refine_layers < 0:
            raise ValueError(f"refine_layers={self.refine_layers}: expected >= 0 (0: the whole body)")
        if self.refine_per_class < 2:
            raise ValueError(f"refine_per_class={self.refine_per_class}: expected >= 2 (two halves)")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}: expected one of {HEADS}")
        if not 2 <= self.max_classes <= 1000:
            raise ValueError(f"max_classes={self.max_classes}: expected 2..1000")
        if not 8 <= self.image_size <= 512:
            raise ValueError(f"image_size={self.image_size}: expected 8..512")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must have 3 entries and std > 0, got {self.mean}, {self.std}")
        for name in ("encoder_width", "hidden", "layer_embedding", "sketch_per_class", "stats_images",
                     "chunk_images", "memory_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.whiten_eps < 0:
            raise ValueError(f"whiten_eps={self.whiten_eps}: expected >= 0 (0: off)")
        if self.lowrank < 0:
            raise ValueError(f"lowrank={self.lowrank}: expected >= 0")
        if not 0 < self.modulation < 1:
            raise ValueError(f"modulation={self.modulation}: expected in (0, 1)")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PudNetConfig":
        return from_dict(cls, json.loads(text))
