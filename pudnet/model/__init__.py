"""The hypernetwork (``hypernetwork``), the targets it generates (``targets``), its classifier heads (``heads``),
its config (``config``, torch-free), checkpoints, prediction and the meta-training step (``meta``)."""
