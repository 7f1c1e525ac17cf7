"""PudNet: generate the weights of a ConvNet for an unseen labelled image dataset (arXiv 2310.11862).

Plain PyTorch, importable without Ray: the Ray layers live in ``jobs/`` and ``serve_app/``.
"""
from .config import PudNetConfig
from .model import PudNet

__all__ = ["PudNet", "PudNetConfig"]
