"""PudNet over HTTP (arXiv 2310.11862): POST a labelled dataset, get back a target network's weights.

    serve run serve_app/config.yaml        # a local cluster; set args.checkpoints first
    serve deploy serve_app/config.yaml     # a running cluster (its dashboard must be up)
    pudnet predict --endpoint http://127.0.0.1:8000 --data DIR --arch convnet --out weights.safetensors

The deployment loads its checkpoints once per replica and swaps them in place when ``user_config``
changes; routes only read, validate and shape, around the pure ``PudNetServer.predict``.
"""
import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import ray
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from ray.util import metrics
from safetensors.torch import save as safetensors_bytes
from starlette.exceptions import HTTPException

from pudnet.data import ClassBank
from pudnet.predict import Prediction, predict, validate_dataset

from .checkpoints import ServedModel, load_served
from .inputs import BadInput, read_body, read_upload
from .paths import DatasetPath, load_path
from .schemas import (PREDICT_BODY, PREDICT_RESPONSES, Arch, Health, HotSwap, ModelInfo, ModelsResponse, OutFormat,
                      ServeArgs)


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


app = FastAPI(title="PudNet", description="Generate a ConvNet's weights for a labelled image dataset.")


def _reject(status: int, kind: str, message: str) -> JSONResponse:
    _metrics().errors.inc(tags={"kind": kind})
    return JSONResponse({"error": kind, "detail": message}, status_code=status)


@app.exception_handler(BadInput)
async def _bad_input(request: Request, exc: BadInput) -> JSONResponse:
    return _reject(exc.status, exc.kind, exc.message)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _reject(422, "invalid_request", _describe(exc.errors()))


def _describe(errors: list[dict]) -> str:
    """Pydantic/FastAPI errors as one line: ``query.arch: Input should be 'convnet' or 'resnet18'``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _reject(exc.status_code, "http_error", str(exc.detail))


@serve.deployment(name="PudNetServer", max_ongoing_requests=4)
@serve.ingress(app)
class PudNetServer:
    """One replica: checkpoints loaded at start, swapped by ``reconfigure``, one compute thread."""

    def __init__(self, args: ServeArgs):
        self.args = args
        self.device = torch.accelerator.current_accelerator() if ray.get_gpu_ids() else None
        self.models = {arch: load_served(arch, uri, self.device) for arch, uri in args.checkpoints.items()}
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="pudnet")  # queued requests wait, /healthz doesn't

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

    @app.post("/v1/predict", response_class=Response, responses=PREDICT_RESPONSES, openapi_extra=PREDICT_BODY)
    async def predict_http(self, request: Request, arch: Arch = "convnet",
                           out_format: OutFormat = Query("safetensors", alias="format")) -> Response:
        """Generate the weights of ``arch`` for the dataset in the body."""
        _metrics().requests.inc(tags={"route": "predict"})
        start = time.perf_counter()
        body = await read_body(request, self.args.max_upload_bytes)
        is_json = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        payload = await asyncio.get_running_loop().run_in_executor(
            self.compute, self._weights_file, arch, out_format, body, is_json, start)
        return Response(payload, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="weights.{out_format}"'})

    def _weights_file(self, arch: str, out_format: str, body: bytes, is_json: bool, start: float) -> bytes:
        """Decode, predict, serialise: the blocking part of a request, run on the compute thread."""
        served, limits = self._served(arch), self.args  # this model throughout, even if a hot swap lands meanwhile
        size = served.model.cfg.image_size
        if is_json:
            try:
                request = DatasetPath.model_validate_json(body)
            except ValidationError as e:
                raise BadInput(422, "invalid_request", f"JSON body: {_describe(e.errors())}") from e
            bank = load_path(request, size, limits.max_images, limits.allowed_roots)
        else:
            bank = read_upload(body, size, limits.max_images, limits.max_extracted_bytes)
        decoded = time.perf_counter()
        prediction = self._generate(served, bank)
        elapsed = time.perf_counter() - start
        _metrics().latency.observe(elapsed, tags={"arch": arch})
        _metrics().images.observe(len(bank.images), tags={"arch": arch})
        metadata = {**prediction.metadata, "decode_seconds": f"{decoded - start:.6f}",
                    "server_seconds": f"{elapsed:.6f}"}
        if out_format == "safetensors":
            return safetensors_bytes(prediction.state_dict, metadata)
        buffer = io.BytesIO()
        torch.save({"state_dict": prediction.state_dict, "metadata": metadata}, buffer)
        return buffer.getvalue()

    @app.get("/v1/models", response_model=ModelsResponse)
    async def models_http(self) -> ModelsResponse:
        _metrics().requests.inc(tags={"route": "models"})
        models = [ModelInfo(arch=arch, checkpoint_uri=m.uri, checkpoint_id=m.checkpoint_id, max_classes=cfg.max_classes,
                            image_size=cfg.image_size, target_kwargs=cfg.target_kwargs, mean=cfg.mean, std=cfg.std)
                  for arch, m in sorted(self.models.items()) for cfg in [m.model.cfg]]
        return ModelsResponse(models=models, replica=serve.get_replica_context().replica_id.unique_id)

    @app.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return Health(status="ok", architectures=sorted(self.models))


def build_app(args: ServeArgs) -> Application:
    """The application: ``serve run serve_app/config.yaml`` calls it with the file's ``args``."""
    return PudNetServer.options(ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
                                user_config={"checkpoints": args.checkpoints}).bind(args)
