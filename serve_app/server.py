"""``PudNetServer``: one replica's work (decode within the budget, generate, serialise), behind the gateway.

Checkpoints are loaded once per replica and swapped in place when ``user_config`` changes; the pure step is
``predict(arch, bank)``. A refused request comes back as a ``BadInput`` value for the gateway to answer with.
"""
import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import ray
import torch
from pydantic import ValidationError
from ray import serve
from ray.util import metrics

from pudnet.data.tasks import ClassBank
from pudnet.model.predict import Prediction, predict, validate_dataset

from .budget import BadInput, Budget
from .checkpoints import ServedModel, load_served
from .export import exported_program
from .inputs import read_upload
from .paths import DatasetPath, load_path
from .schemas import HotSwap, ModelInfo, ModelsResponse, ServeArgs
from .streaming import SafetensorsStream


class Metrics:
    """Custom series on the Ray dashboard / Prometheus, beside Serve's own request metrics."""

    def __init__(self):
        self.requests = metrics.Counter("pudnet_requests", "requests by route", tag_keys=("route",))
        self.errors = metrics.Counter("pudnet_errors", "rejected requests by kind", tag_keys=("kind",))
        self.latency = metrics.Histogram("pudnet_predict_seconds", "server time per prediction",
                                         [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60], tag_keys=("arch",))
        self.images = metrics.Histogram("pudnet_images_per_request", "images per prediction",
                                        [10, 50, 100, 200, 500, 1000, 2000, 5000], tag_keys=("arch",))


@cache
def _metrics() -> Metrics:
    """Created on first use inside the replica process, where the exception handlers also run."""
    return Metrics()


def describe(errors: list[dict]) -> str:
    """Pydantic/FastAPI errors as one line: ``query.arch: Input should be 'convnet' or 'resnet18'``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)


@serve.deployment(name="PudNetServer", max_ongoing_requests=4)
class PudNetServer:
    """One replica: checkpoints loaded at start, swapped by ``reconfigure``, one compute thread."""

    def __init__(self, args: ServeArgs):
        self.args = args
        self.device = torch.accelerator.current_accelerator() if ray.get_gpu_ids() else None
        self.models = {arch: load_served(arch, uri, self.device) for arch, uri in args.checkpoints.items()}
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="pudnet")  # one request's work at a time

    async def reconfigure(self, user_config: dict) -> None:
        """Load only changed checkpoints, off the event loop so requests keep flowing, then swap at once."""
        models: dict[str, ServedModel] = {}
        for arch, uri in HotSwap.model_validate(user_config).checkpoints.items():
            current = self.models.get(arch)
            same = current is not None and current.uri == uri
            models[arch] = current if same else await asyncio.to_thread(load_served, arch, uri, self.device)
        self.models = models

    def _served(self, arch: str) -> ServedModel:
        if arch not in self.models:
            raise BadInput(404, "arch_not_served", f"arch={arch!r} is not served here; served: {sorted(self.models)}")
        return self.models[arch]

    def predict(self, arch: str, bank: ClassBank) -> Prediction:
        """The pure step, dataset in and weights out; also reachable through a DeploymentHandle."""
        return self._generate(self._served(arch), bank)

    def _generate(self, served: ServedModel, bank: ClassBank) -> Prediction:
        try:
            validate_dataset(served.model, bank.images, bank.labels, bank.class_names)
        except ValueError as e:
            raise BadInput(400, "invalid_dataset", str(e)) from e
        return predict(served.model, bank.images, bank.labels, bank.class_names, checkpoint_id=served.checkpoint_id)

    async def weights(self, arch: str, out_format: str, dtype: str, body: bytes, is_json: bool,
                      seconds_left: float) -> AsyncIterator[BadInput | int | bytes]:
        """Streamed (``handle.options(stream=True)``): first the refusal as a value (exceptions would reach the
        gateway wrapped) and nothing more, or the file's size in bytes; then the file in chunks."""
        limits = self.args
        budget = Budget(limits.max_image_pixels, limits.max_total_pixels, limits.max_request_seconds,
                        deadline=time.monotonic() + seconds_left)
        work = asyncio.get_running_loop().run_in_executor(
            self.compute, self._weights_file, arch, out_format, dtype, body, is_json, budget)
        try:
            size, chunks = await work
        except BadInput as e:
            yield e
            return
        except asyncio.CancelledError:  # client gone or gateway timed out: the compute loop stops at the next image
            budget.cancelled.set()
            raise
        yield size
        for chunk in chunks:  # tensors are cast chunk by chunk as the gateway takes them
            yield chunk

    def _weights_file(self, arch: str, out_format: str, dtype: str, body: bytes, is_json: bool,
                      budget: Budget) -> tuple[int, Iterable[bytes]]:
        """Decode, predict, and plan the file: the blocking part of a request, run on the compute thread.
        Returns the file's size and its chunks; safetensors chunks are produced as they are sent."""
        start = time.perf_counter()
        if dtype != "float32" and out_format != "safetensors":
            raise BadInput(400, "invalid_request", f"dtype={dtype} applies to format=safetensors; {out_format} "
                                                   "files are float32")
        budget.check()  # it may have waited in the queue past its deadline, or been cancelled meanwhile
        served, limits = self._served(arch), self.args  # this model throughout, even if a hot swap lands meanwhile
        size = served.model.cfg.image_size
        if is_json:
            try:
                request = DatasetPath.model_validate_json(body)
            except ValidationError as e:
                raise BadInput(422, "invalid_request", f"JSON body: {describe(e.errors())}") from e
            bank = load_path(request, size, limits.max_images, limits.allowed_roots, budget)
        else:
            bank = read_upload(body, size, limits.max_images, limits.max_extracted_bytes, budget)
        decoded = time.perf_counter()
        budget.check()
        prediction = self._generate(served, bank)
        elapsed = time.perf_counter() - start
        _metrics().latency.observe(elapsed, tags={"arch": arch})
        _metrics().images.observe(len(bank.images), tags={"arch": arch})
        metadata = {**prediction.metadata, "decode_seconds": f"{decoded - start:.6f}",
                    "server_seconds": f"{elapsed:.6f}"}
        if out_format == "safetensors":
            metadata["dtype"] = dtype
            if dtype != "float32":
                metadata["float32_tensors"] = "BatchNorm running_mean and running_var"
            stream = SafetensorsStream(prediction.state_dict, metadata, getattr(torch, dtype))
            return len(stream), stream
        if out_format == "pt2":
            data = exported_program(prediction, served.model.cfg, metadata)
        else:
            buffer = io.BytesIO()
            torch.save({"state_dict": prediction.state_dict, "metadata": metadata}, buffer)
            data = buffer.getvalue()
        return len(data), [data]

    def models_info(self) -> ModelsResponse:
        models = [ModelInfo(arch=arch, checkpoint_uri=m.uri, checkpoint_id=m.checkpoint_id, max_classes=cfg.max_classes,
                            image_size=cfg.image_size, target_kwargs=cfg.target_kwargs, mean=cfg.mean, std=cfg.std)
                  for arch, m in sorted(self.models.items()) for cfg in [m.model.cfg]]
        return ModelsResponse(models=models, replica=serve.get_replica_context().replica_id.unique_id)
