"""PudNet: generate the weights of a ConvNet for an unseen labelled image dataset (arXiv 2310.11862).

Plain PyTorch, importable without Ray: the Ray layers live in ``jobs/`` and ``serve_app/``. The rooms:
``pudnet.model`` (the hypernetwork and what it generates), ``pudnet.data`` (sources, shards, tasks),
``pudnet.evaluation`` (methods scored on tasks) and ``pudnet.client`` (the HTTP client, no torch).
``PudNet`` and ``PudNetConfig`` load on first use, so ``import pudnet.client`` does not import torch.
"""
import importlib

_LAZY = {"PudNet": "pudnet.model.hypernetwork", "PudNetConfig": "pudnet.model.config"}

__all__ = ["PudNet", "PudNetConfig"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pudnet' has no attribute {name!r}")
