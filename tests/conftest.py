"""Shared fixtures: a small real class bank and a briefly meta-trained PudNet checkpoint.

Tests write only into temporary directories: the data cache is ``$PUDNET_CACHE_DIR`` where the caller chose one
(CI gives a fresh temporary one), else a temporary directory removed after the session; never ``~/.cache``.
"""
import atexit
import os
import shutil
import sys
import tempfile

import pytest
import torch

from pudnet import PudNet, PudNetConfig

from pudnet.model import checkpoint
from pudnet.data.tasks import SubDatasetSampler, split_classes
from pudnet.data.sources import load_class_bank
from pudnet.model.meta import Episode, train_step

if not os.environ.get("PUDNET_CACHE_DIR"):
    os.environ["PUDNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="pudnet-test-cache-")
    atexit.register(shutil.rmtree, os.environ["PUDNET_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every test cluster is a throwaway one on 127.0.0.1. Ray reads the auth mode once per process: a token-auth
# driver left by one module rejects the raylet of the next module's auth-off cluster, whose actors then never start.
os.environ["RAY_AUTH_MODE"] = "disabled"
TINY_MODEL = dict(target_kwargs={"depth": 3, "width": 32}, encoder_width=16, hidden=64, layer_embedding=16,
                  max_classes=10)


@pytest.fixture(scope="module", autouse=True)
def no_cluster_outlives_its_module(request):
    """Every module shuts down the Ray it started, so the next module's own cluster can start (issue: a job
    function that left Ray initialised made every later module fail with "Maybe you called ray.init twice")."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail(f"{request.module.__name__} left Ray initialised")


@pytest.fixture(scope="session")
def pypi_bank():
    """The embedded sources that install from PyPI alone (digits, mnist, animal_mnist), 32 px."""
    bank, _ = load_class_bank(["digits", "mnist", "animal_mnist"], image_size=32, max_per_class=200)
    return bank


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, pypi_bank):
    """A convnet PudNet meta-trained for 150 steps (~30 s): clearly better than chance on unseen classes.

    Digits are left out whole (the inter-dataset setting) so tests can draw unseen sub-datasets from them.
    """
    torch.manual_seed(0)
    split = split_classes(pypi_bank.class_names, ["digits"], intra_fraction=0.25, min_intra=5, seed=0)
    model = PudNet(PudNetConfig(**TINY_MODEL))
    sampler = SubDatasetSampler(pypi_bank, split.meta_train, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(150):
        train_step(model, optimizer, [Episode.from_subdataset(sampler.sample(step, 5, 5, 5), model)])
    directory = tmp_path_factory.mktemp("tiny_checkpoint")
    checkpoint.save(directory, model.eval(), split)
    return directory
