"""Labelled images: the sources (``sources``, ``bank_sources``, ``bank``), their on-disk shards (``shards``),
class banks, splits and tasks (``tasks``), the task stream (``stream``) and its augmentation (``augment``)."""
