"""End to end over real HTTP on 127.0.0.1: serve_app/config.yaml deployed (as `serve run` does) on a private
cluster, unseen digits sent as each input kind, the weights loaded strictly into plain targets and evaluated."""
import copy
import io
import json
import math
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch
import torchvision
import yaml
from PIL import Image
from ray import serve
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import DeploymentSchema

from archives import tar_gz_of, zip_of
from pudnet import PudNet, PudNetConfig
from pudnet.model import checkpoint, targets
from pudnet.data import shards
from pudnet.client import main as cli_main
from pudnet.data.tasks import ClassBank, to_tensor
from pudnet.model.predict import predict
from serve_app import local
from serve_app.schemas import ServeArgs

APP, DEPLOYMENT = "pudnet", "PudNetServer"
UPLOAD_PER_CLASS = 100  # 500 images in 5 classes; the rest of each class is the evaluation set


def npz_bytes(images, labels, class_names=None) -> bytes:
    buffer = io.BytesIO()
    extra = {} if class_names is None else {"class_names": np.array(class_names)}
    np.savez(buffer, images=images, labels=labels, **extra)
    return buffer.getvalue()


def png_files(images, labels, class_names, prefix="") -> dict[str, bytes]:
    files = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        files[f"{prefix}{class_names[label]}/{i}.png"] = buffer.getvalue()
    return files


def read_weights(content: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a safetensors file (header: 8-byte little-endian length, then JSON)."""
    from safetensors.torch import load
    size = int.from_bytes(content[:8], "little")
    return load(content), json.loads(content[8:8 + size])["__metadata__"]


def post(url: str, body: bytes, content_type: str = "application/octet-stream", **params) -> requests.Response:
    return requests.post(url + "/v1/predict", data=body, params=params, headers={"Content-Type": content_type},
                         timeout=120)


def evaluate(state, metadata, images, labels, class_names) -> float:
    """Accuracy of the returned weights, loaded strictly into a plain target, in eval mode."""
    names = json.loads(metadata["class_names"])
    assert sorted(names) == sorted(class_names)
    net = targets.build(metadata["architecture"], len(names), **json.loads(metadata["target_kwargs"]))
    net.load_state_dict(state)  # strict: every key and shape, BatchNorm statistics included
    net.eval()
    norm = json.loads(metadata["normalization"])
    with torch.no_grad():
        predicted = net(to_tensor(images, norm["mean"], norm["std"])).argmax(1).numpy()
    head_index = np.array([names.index(class_names[label]) for label in labels])
    return float((predicted == head_index).mean())


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    """An untrained ResNet-18 PudNet: what matters here is the key/shape contract with torchvision."""
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(arch="resnet18", target_kwargs={}, max_classes=10, encoder_width=8, hidden=32,
                                layer_embedding=8, lowrank=2))
    directory = tmp_path_factory.mktemp("resnet_checkpoint")
    checkpoint.save(directory, model.eval())
    return directory


@pytest.fixture(scope="module")
def digits(pypi_bank, tiny_checkpoint):
    """5 digits classes the tiny checkpoint never saw: an upload set and a disjoint evaluation set."""
    split = checkpoint.load(tiny_checkpoint).split
    classes = split.inter_test[:5]
    by_class, index = pypi_bank.indices_by_class(), {n: i for i, n in enumerate(pypi_bank.class_names)}
    rows = [by_class[index[c]] for c in classes]
    names = tuple(c.split("/", 1)[1] for c in classes)

    def take(part):
        chosen = [r[:UPLOAD_PER_CLASS] if part == "upload" else r[UPLOAD_PER_CLASS:] for r in rows]
        labels = np.repeat(np.arange(len(classes)), [len(r) for r in chosen])
        return ClassBank(pypi_bank.images[np.concatenate(chosen)], labels, names)
    return SimpleNamespace(upload=take("upload"), eval=take("eval"), names=names)


@pytest.fixture(scope="module")
def server(tiny_checkpoint, resnet_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("server_datasets")
    config = local.read_config(checkpoints={"convnet": str(tiny_checkpoint),
                                            "resnet18": resnet_checkpoint.as_uri()},  # the URI fetch path
                               allowed_roots=[str(root)])
    try:
        url = local.start()
        local.deploy(config)
        yield SimpleNamespace(url=url, config=config, root=root)
    finally:
        local.stop()


def test_config_keys_are_known():
    """Serve ignores unknown keys silently (an old autoscaling name would do nothing): every key must be known."""
    config = yaml.safe_load(local.CONFIG.read_text())
    for app in config["applications"]:
        assert app["import_path"] == "serve_app.app:build_app"
        ServeArgs.model_validate(app["args"])  # extra="forbid"
        assert [d["name"] for d in app["deployments"]] == [DEPLOYMENT, "PudNetGateway"]  # user_config goes to [0]
        for deployment in app["deployments"]:
            assert set(deployment) <= set(DeploymentSchema.model_fields), deployment
        autoscaling = app["deployments"][0]["autoscaling_config"]
        assert set(autoscaling) <= set(AutoscalingConfig.model_fields), autoscaling
        assert {"min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
                "downscale_delay_s"} <= set(autoscaling)
    assert config["http_options"]["host"] == "127.0.0.1"


@pytest.mark.integration
def test_config_takes_effect(server):
    applied = local.deployment_config(APP, DEPLOYMENT)
    deployment, args = server.config["applications"][0]["deployments"][0], server.config["applications"][0]["args"]
    for key, value in deployment["autoscaling_config"].items():
        assert applied["autoscaling_config"][key] == value, key
    assert applied["max_ongoing_requests"] == deployment["max_ongoing_requests"]
    assert applied["ray_actor_options"]["num_cpus"] == args["num_cpus"]
    assert applied["ray_actor_options"]["num_gpus"] == args["num_gpus"]
    assert local.running_replicas(APP, DEPLOYMENT) == deployment["autoscaling_config"]["min_replicas"]


@pytest.mark.integration
def test_models_health_and_openapi(server, tiny_checkpoint):
    assert requests.get(server.url + "/healthz").json() == {"status": "ok", "architectures": ["convnet", "resnet18"]}
    models = {m["arch"]: m for m in requests.get(server.url + "/v1/models").json()["models"]}
    assert models["convnet"]["checkpoint_uri"] == str(tiny_checkpoint)
    assert models["convnet"]["checkpoint_id"].startswith("sha256:")
    assert models["convnet"]["max_classes"] == checkpoint.load(tiny_checkpoint).model.cfg.max_classes
    schema = requests.get(server.url + "/openapi.json").json()
    assert {"/v1/predict", "/v1/models", "/healthz"} <= set(schema["paths"])
    operation = schema["paths"]["/v1/predict"]["post"]
    assert {"application/zip", "application/x-npz", "application/json"} <= set(operation["requestBody"]["content"])
    assert {p["name"]: p["schema"]["enum"] for p in operation["parameters"]} == {
        "arch": ["convnet", "resnet18"], "format": ["safetensors", "pt", "pt2"],
        "dtype": ["float32", "float16", "bfloat16"]}
    assert operation["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["npz", "zip", "tar.gz", "path", "shards"])
def test_unseen_digits_each_input_kind(server, digits, kind):
    up, names = digits.upload, digits.names
    if kind == "shards":  # our Parquet format; its class names keep the "<source>/" prefix
        names = tuple(f"digits/{name}" for name in names)
        folder = str(server.root / "shards")
        shards.write_bank(ClassBank(up.images, up.labels, names), folder, "digits", {"test": "serve"}, test_fraction=0)
        response = post(server.url, json.dumps({"path": folder}).encode(), "application/json")
    elif kind == "npz":
        response = post(server.url, npz_bytes(up.images, up.labels, up.class_names), "application/x-npz")
    elif kind == "path":
        folder = server.root / "digits"
        if not folder.exists():
            for name, data in png_files(up.images, up.labels, up.class_names).items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
        response = post(server.url, json.dumps({"path": str(folder)}).encode(), "application/json")
    else:  # the zip wraps everything in one root folder, as zipping a folder does; the tar does not
        files = png_files(up.images, up.labels, up.class_names, prefix="mydigits/" if kind == "zip" else "")
        response = post(server.url, zip_of(files) if kind == "zip" else tar_gz_of(files), f"application/{kind}")
    assert response.status_code == 200, response.text
    state, metadata = read_weights(response.content)
    accuracy = evaluate(state, metadata, digits.eval.images, digits.eval.labels, names)
    assert accuracy > 0.5, f"{accuracy:.3f} on unseen digits (chance 0.2)"
    # The self-check scores these same weights on held-out uploaded images: both estimate one accuracy, so
    # they differ only by binomial sampling noise; allow 3 standard errors of the difference.
    self_check, n_self, n_eval = float(metadata["self_check_accuracy"]), int(metadata["self_check_images"]), len(
        digits.eval.labels)
    tolerance = 3 * math.sqrt(accuracy * (1 - accuracy) * (1 / n_self + 1 / n_eval))
    assert abs(self_check - accuracy) <= tolerance, (self_check, accuracy, n_self, tolerance)
    assert n_self == round(0.15 * UPLOAD_PER_CLASS) * len(names)
    assert metadata["pudnet_checkpoint"].startswith("sha256:") and float(metadata["server_seconds"]) > 0


@pytest.mark.integration
def test_pure_predict_through_handle_matches_local(server, digits, tiny_checkpoint):
    """``predict`` is pure: through a DeploymentHandle it returns what the library computes in-process."""
    remote = serve.get_app_handle(APP).predict.remote("convnet", digits.upload).result(timeout_s=120)
    up, threads = digits.upload, torch.get_num_threads()
    torch.set_num_threads(1)  # as in the 1-CPU replica: the float summation order, hence BatchNorm stats, match
    try:
        here = predict(checkpoint.load(tiny_checkpoint).model, up.images, up.labels, up.class_names)
    finally:
        torch.set_num_threads(threads)
    assert remote.self_check_accuracy == here.self_check_accuracy
    for key, value in here.state_dict.items():
        torch.testing.assert_close(remote.state_dict[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("out_format", ["safetensors", "pt", "pt2"])
def test_resnet18_loads_strictly_into_torchvision(server, digits, out_format):
    up = digits.upload
    keep = np.concatenate([np.flatnonzero(up.labels == c)[:8] for c in range(3)])
    response = post(server.url, npz_bytes(up.images[keep], up.labels[keep]), arch="resnet18", format=out_format)
    assert response.status_code == 200, response.text
    if out_format == "pt2":  # a self-contained program: no torchvision, no state_dict (tests/serve_app/test_export.py)
        extra = {"metadata.json": ""}
        program = torch.export.load(io.BytesIO(response.content), extra_files=extra)
        norm = json.loads(json.loads(extra["metadata.json"])["normalization"])
        logits = program.module()(to_tensor(up.images[keep], norm["mean"], norm["std"]))
        assert logits.shape == (24, 3) and torch.isfinite(logits).all()
        return
    if out_format == "safetensors":
        state, metadata = read_weights(response.content)
    else:
        saved = torch.load(io.BytesIO(response.content), weights_only=True)
        state, metadata = saved["state_dict"], saved["metadata"]
    assert metadata["architecture"] == "resnet18" and json.loads(metadata["class_names"]) == ["0", "1", "2"]
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(state)  # strict, torchvision key names, BatchNorm running stats included
    net.eval()
    with torch.no_grad():
        logits = net(to_tensor(up.images[keep], *[json.loads(metadata["normalization"])[k] for k in ("mean", "std")]))
    assert logits.shape == (24, 3) and torch.isfinite(logits).all()


@pytest.mark.integration
@pytest.mark.parametrize("dtype,tolerance", [("float16", 0.02), ("bfloat16", 0.15)])
def test_lean_response(server, digits, dtype, tolerance):
    """dtype=float16|bfloat16: about half the bytes, BatchNorm statistics float32, the metadata says so, and the
    weights load into the plain float32 target. float16 keeps the float32 response's accuracy; bfloat16's 8-bit
    mantissa cost 9 points here (0.68 vs 0.77: eval-mode BatchNorm divides the rounding error by small running
    variances), which the README states; the bound keeps it from getting worse unnoticed."""
    up = digits.upload
    body = npz_bytes(up.images, up.labels, up.class_names)
    full, lean = post(server.url, body), post(server.url, body, dtype=dtype)
    assert full.status_code == lean.status_code == 200, lean.text
    state, metadata = read_weights(lean.content)
    assert metadata["dtype"] == dtype and "running_var" in metadata["float32_tensors"]
    assert {str(v.dtype) for k, v in state.items() if k.endswith(("running_mean", "running_var"))} == {"torch.float32"}
    assert {str(v.dtype) for k, v in state.items() if k.endswith("weight")} == {f"torch.{dtype}"}
    assert len(lean.content) < 0.6 * len(full.content)
    exact = evaluate(*read_weights(full.content), digits.eval.images, digits.eval.labels, digits.names)
    cast = evaluate(state, metadata, digits.eval.images, digits.eval.labels, digits.names)
    print(f"unseen-digit accuracy, float32 {exact:.3f} vs {dtype} {cast:.3f}; bytes {len(full.content)} vs "
          f"{len(lean.content)}")
    assert abs(cast - exact) <= tolerance, (cast, exact)


@pytest.mark.integration
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_streamed_resnet18_file_loads_into_torchvision(server, digits, tmp_path, dtype):
    """The safetensors response is streamed with its exact Content-Length; `pudnet predict` writes it to disk as it
    arrives, and the file loads strictly into torchvision's ResNet-18 for every dtype."""
    up = digits.upload
    keep = np.concatenate([np.flatnonzero(up.labels == c)[:8] for c in range(3)])
    (tmp_path / "upload.npz").write_bytes(npz_bytes(up.images[keep], up.labels[keep]))
    with requests.post(server.url + "/v1/predict", data=(tmp_path / "upload.npz").read_bytes(), stream=True,
                       params={"arch": "resnet18", "dtype": dtype}, timeout=120) as response:
        assert response.status_code == 200, response.text
        assert "chunked" not in response.headers.get("Transfer-Encoding", "")
        declared, received = int(response.headers["Content-Length"]), sum(map(len, response.iter_content(1 << 16)))
    assert received == declared
    out = tmp_path / "weights.safetensors"
    assert cli_main(["predict", "--endpoint", server.url, "--data", str(tmp_path / "upload.npz"), "--arch", "resnet18",
                     "--dtype", dtype, "--out", str(out)]) == 0
    assert out.stat().st_size == declared
    state, metadata = read_weights(out.read_bytes())
    assert metadata["dtype"] == dtype
    assert {str(v.dtype) for k, v in state.items() if k.endswith("conv1.weight")} == {f"torch.{dtype}"}
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(state)  # strict; copies cast back into the float32 parameters
    net.eval()
    norm = json.loads(metadata["normalization"])
    with torch.no_grad():
        logits = net(to_tensor(up.images[keep], norm["mean"], norm["std"]))
    assert logits.shape == (24, 3) and torch.isfinite(logits).all()


@pytest.mark.integration
def test_cli_round_trip(server, digits, tmp_path):
    up = digits.upload
    keep = np.concatenate([np.flatnonzero(up.labels == c)[:20] for c in range(len(digits.names))])
    for name, data in png_files(up.images[keep], up.labels[keep], up.class_names).items():
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(data)
    out = tmp_path / "weights.safetensors"
    assert cli_main(["predict", "--endpoint", server.url, "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    state, metadata = read_weights(out.read_bytes())
    assert evaluate(state, metadata, digits.eval.images, digits.eval.labels, digits.names) > 0.5


@pytest.mark.integration
def test_hot_swap_in_place_without_dropping_requests(server, digits, tiny_checkpoint, tmp_path):
    """Changing ``user_config`` reloads the checkpoint on the running replica while requests keep succeeding."""
    before = requests.get(server.url + "/v1/models").json()
    loaded = checkpoint.load(tiny_checkpoint)
    checkpoint.save(tmp_path / "v2", loaded.model, loaded.split, extra={"note": "same weights, new file"})
    swapped = copy.deepcopy(server.config)
    args = swapped["applications"][0]["args"]
    swapped["applications"][0]["deployments"][0]["user_config"] = {
        "checkpoints": {**args["checkpoints"], "convnet": str(tmp_path / "v2")}}
    up = digits.upload
    body, statuses, done = npz_bytes(up.images[::10], up.labels[::10], up.class_names), [], threading.Event()

    def traffic():  # one client: the replica count stays at min_replicas, so "same replica" is meaningful
        while not done.is_set():
            statuses.append(post(server.url, body).status_code)
    client = threading.Thread(target=traffic)
    client.start()
    try:
        time.sleep(1)
        local.deploy(swapped)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = requests.get(server.url + "/v1/models").json()
            if after["models"][0]["checkpoint_id"] != before["models"][0]["checkpoint_id"]:
                break
            time.sleep(0.2)
        time.sleep(1)
    finally:
        done.set()
        client.join()
    try:
        assert after["models"][0]["checkpoint_uri"] == str(tmp_path / "v2")
        assert after["models"][1] == before["models"][1]  # resnet18 untouched, not reloaded
        assert after["replica"] == before["replica"]       # reconfigured in place, not restarted
        assert len(statuses) >= 3 and set(statuses) == {200}, statuses
        metadata = read_weights(post(server.url, body).content)[1]
        assert metadata["pudnet_checkpoint"] == after["models"][0]["checkpoint_id"]
    finally:
        local.deploy(server.config)  # back to the module's config for any later test


def test_shipped_config_serves_what_train_writes():
    """`python jobs/train.py` writes <storage_path>/<name> of its TrainConfig defaults: the config serves that."""
    from jobs.train import TrainConfig
    args = ServeArgs.model_validate(yaml.safe_load(local.CONFIG.read_text())["applications"][0]["args"])
    assert args.checkpoints == {"convnet": f"{TrainConfig.storage_path}/{TrainConfig.name}"}
    assert TrainConfig().model.arch == "convnet"


@pytest.mark.integration
def test_two_clients_use_both_cores(server, digits):
    """Two clients sending at once: autoscaling starts the second one-CPU replica (2 cores, 2 replicas)."""
    up = digits.upload
    body, done = npz_bytes(up.images, up.labels, up.class_names), threading.Event()

    def client():
        while not done.is_set():
            assert post(server.url, body).status_code == 200
    clients = [threading.Thread(target=client) for _ in range(2)]
    for c in clients:
        c.start()
    try:
        deadline, most = time.monotonic() + 45, 1
        while time.monotonic() < deadline and most < 2:
            most = max(most, local.running_replicas(APP, DEPLOYMENT))
            time.sleep(0.5)
    finally:
        done.set()
        for c in clients:
            c.join()
    assert most == 2, "2 concurrent clients never got a 2nd replica"
