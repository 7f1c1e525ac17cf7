"""The cluster recipe end to end at toy scale, as a user runs it: an ILSVRC-layout folder of small JPEGs and an
ImageFolder source whose shard directory is named differently from its folder, through `jobs/prepare_data.py`,
`jobs/train.py --config cluster/configs/imagenet_resnet18.yaml` (overridden only in size), the end-of-run
evaluation read back from the checkpoint alone, and a served prediction loaded strictly into torchvision."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torchvision
from PIL import Image
from safetensors.torch import load

from pudnet.model.checkpoint import newest
from serve_app import local

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668"]
PETS = ["cat", "dog", "hamster", "parrot"]
SIZE = [  # TrainConfig keys of the ImageNet recipe overridden for a 2-core CPU box: sizes only (plus the second
    # source, left out whole so that the run has an inter-dataset setting)
    "model.max_classes=4", "model.encoder_width=8", "model.hidden=16", "model.layer_embedding=8", "model.lowrank=2",
    "ways=2", "shots=2", "queries=2", "tasks_per_step=1", "steps=2", "warmup_steps=0", "window_rows=0",
    "stream_actors=1", "stream_cpus=0.5", "stream_cache_mb=64", "num_workers=2", "cpus_per_worker=0.5",
    "use_gpu=false", "log_every=1", "val_every=2", "val_tasks=1", "checkpoint_every=2", "eval_tasks=2",
    "eval_images_per_class=20", "eval_protocols=tasks", "max_failures=0", "sources=imagenet-112px,pets-112px", "heldout_sources=pets-112px"]


def picture(rng: np.random.Generator, label: int, size: int = 40) -> Image.Image:
    """A class-coloured square on noise: easy to tell apart, cheap to make."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    lo = 4 + 3 * (label % 4)
    image[lo:lo + 20, lo:lo + 20] = [(70 * label) % 256, (150 + 40 * label) % 256, (230 - 25 * label) % 256]
    return Image.fromarray(image)


def write_jpegs(folder: Path, label: int, count: int, rng: np.random.Generator, stem: str) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        picture(rng, label).save(folder / f"{stem}_{i}.JPEG", "JPEG", quality=90)


def job(*args: str, env: dict, timeout: int = 600) -> str:
    out = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """prepare_data (ilsvrc, folder) and the recipe's training run; returns its directory and stdout."""
    tmp = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(0)
    for label, wnid in enumerate(WNIDS):   # 20 train and 10 val JPEGs per class, val in class folders
        write_jpegs(tmp / "ILSVRC2012" / "train" / wnid, label, 20, rng, wnid)
        write_jpegs(tmp / "ILSVRC2012" / "val" / wnid, label, 10, rng, f"val_{wnid}")
    for label, name in enumerate(PETS):    # 50 per class: 40 train, 10 test (test_fraction 0.2)
        write_jpegs(tmp / "pets" / name, label + 4, 50, rng, name)
    env = {**os.environ, "RAY_ADDRESS": ""}
    data, runs = tmp / "shards", tmp / "runs"
    job("jobs/prepare_data.py", "ilsvrc", str(tmp / "ILSVRC2012"), "--out", str(data / "imagenet-112px"),
        "--image-size", "112", env=env)
    job("jobs/prepare_data.py", "folder", str(tmp / "pets"), "--out", str(data / "pets-112px"), "--image-size", "112",
        env=env)
    stdout = job("jobs/train.py", "--config", "cluster/configs/imagenet_resnet18.yaml", *SIZE, f"data_dir={data}",
                 f"storage_path={runs}", env=env, timeout=900)
    return runs / "imagenet-resnet18", stdout


def test_the_recipe_trains_and_evaluates_both_settings_from_the_checkpoint_alone(trained):
    run_dir, stdout = trained
    assert "[pudnet] step=2/2" in stdout
    assert "classes: 3 meta-train" in stdout and "5 intra-test, 4 inter-test" in stdout   # pets left out whole
    assert "**intra-dataset: held-out classes of imagenet**" in stdout
    assert "**inter-dataset: left-out sources of pets**" in stdout
    assert json.loads(newest(run_dir).joinpath("state.json").read_text())["step"] == 2


def test_a_served_prediction_of_the_recipe_loads_into_torchvision(trained):
    run_dir, _ = trained
    checkpoint = newest(run_dir)
    url = local.start(num_cpus=2)
    try:
        local.deploy(local.read_config(checkpoints={"resnet18": str(checkpoint)}))
        rng = np.random.default_rng(1)
        images = np.stack([np.asarray(picture(rng, label).resize((112, 112))) for label in (0, 1, 2) for _ in range(4)])
        body = io.BytesIO()
        np.savez(body, images=images, labels=np.repeat(np.arange(3), 4))
        response = requests.post(url + "/v1/predict", data=body.getvalue(), params={"arch": "resnet18"},
                                 headers={"Content-Type": "application/octet-stream"}, timeout=300)
        assert response.status_code == 200, response.text[:500]
    finally:
        local.stop()
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(load(response.content))   # strict: torchvision's keys, shapes and BatchNorm statistics
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 3)
