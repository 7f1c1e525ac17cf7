"""PudNet over HTTP (arXiv 2310.11862): POST a labelled dataset, get back a target network's weights.

    python jobs/serve.py runs/pudnet-embedded   # the newest checkpoint of a finished run, on 127.0.0.1:8000
    serve run serve_app/config.yaml             # the same from the config file (a local cluster)
    serve deploy serve_app/config.yaml          # a running cluster (its dashboard must be up)
    pudnet predict --endpoint http://127.0.0.1:8000 --data DIR --arch convnet --out weights.safetensors

Two deployments: ``PudNetGateway`` (the HTTP ingress, no CPU reserved) reads and bounds the request and
forwards it to ``PudNetServer`` replicas, which load their checkpoints once, swap them in place when
``user_config`` changes, and do the work around the pure ``PudNetServer.predict``. The split is what
turns a replica lost mid-request into a retryable 503 (Serve's proxy would answer 500) and lets
``/healthz`` answer "starting" while the replicas still load.
"""
import asyncio
import time

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException

from pudnet.data.tasks import ClassBank
from pudnet.model.predict import Prediction

from .budget import BadInput
from .checkpoints import resolve
from .inputs import read_body
from .schemas import (PREDICT_BODY, PREDICT_RESPONSES, Arch, Health, ModelsResponse, OutFormat, ServeArgs,
                      WeightsDtype)
from .server import PudNetServer, _metrics, describe

__all__ = ["ServeArgs", "build_app", "PudNetGateway", "PudNetServer"]

app = FastAPI(title="PudNet", description="Generate a ConvNet's weights for a labelled image dataset.")


RETRY_AFTER_S = 2  # a replacement replica takes ~10 s, but another replica may be up already
_LOST = (RayActorError, ActorDiedError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError)


def _reject(status: int, kind: str, message: str) -> JSONResponse:
    _metrics().errors.inc(tags={"kind": kind})
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": kind, "detail": message}, status_code=status, headers=headers)


@app.exception_handler(BadInput)
async def _bad_input(request: Request, exc: BadInput) -> JSONResponse:
    return _reject(exc.status, exc.kind, exc.message)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _reject(422, "invalid_request", describe(exc.errors()))


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _reject(exc.status_code, "http_error", str(exc.detail))


async def _awaited(response):  # defined before the class: Serve pickles the ingress class as it is decorated
    """A call's result; for a streamed call (``options(stream=True)``), its first item."""
    return await (response.__anext__() if isinstance(response, DeploymentResponseGenerator) else response)

@serve.deployment(name="PudNetGateway", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class PudNetGateway:
    """HTTP in, PudNetServer behind: bounds the body and the server time, maps a lost replica to 503."""

    def __init__(self, server: DeploymentHandle, args: ServeArgs):
        self.server, self.args = server, args

    async def _call(self, response, timeout_s: float, on_timeout: BadInput | None = None):
        """Await a PudNetServer call; 503 if its replica is lost or not up yet, 504 (or ``on_timeout``) past
        ``timeout_s``. Not ``asyncio.wait_for``: it waits for the cancelled call to end, and a call waiting for
        a replica that is still starting ends only when the replica is up."""
        waiting = asyncio.ensure_future(_awaited(response))
        try:
            done, _ = await asyncio.wait({waiting}, timeout=timeout_s)
            if not done:
                response.cancel()
                waiting.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
                raise on_timeout or BadInput(504, "server_time_exceeded", f"no answer within this server's limit "
                                                                          f"of {timeout_s:g} s (max_request_seconds); "
                                                                          "send fewer or smaller images")
            return waiting.result()
        except asyncio.CancelledError:
            response.cancel()  # the client went away: stop the replica's work too
            raise
        except _LOST as e:
            raise BadInput(503, "replica_unavailable", f"the replica serving this request was lost or is not "
                                                       f"ready ({type(e).__name__}); retry in {RETRY_AFTER_S} s") from e

    async def predict(self, arch: str, bank: ClassBank) -> Prediction:
        """``PudNetServer.predict`` through the app's handle (``serve.get_app_handle("pudnet").predict``)."""
        return await self.server.predict.remote(arch, bank)

    @app.post("/v1/predict", response_class=Response, responses=PREDICT_RESPONSES, openapi_extra=PREDICT_BODY)
    async def predict_http(self, request: Request, arch: Arch = "convnet",
                           out_format: OutFormat = Query("safetensors", alias="format"),
                           dtype: WeightsDtype = Query("float32", description="safetensors only: weights in this "
                                                       "dtype, BatchNorm running statistics float32")) -> Response:
        """Generate the weights of ``arch`` for the dataset in the body."""
        _metrics().requests.inc(tags={"route": "predict"})
        start, ceiling = time.monotonic(), self.args.max_request_seconds
        body = await read_body(request, self.args.max_upload_bytes)
        is_json = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        left = ceiling - (time.monotonic() - start)
        stream = self.server.options(stream=True).weights.remote(arch, out_format, dtype, body, is_json, left)
        size = await self._call(stream, left + 1)   # the file's size once it is computed, or the refusal
        if isinstance(size, BadInput):
            raise size
        # the rest of the stream is the file, sent on as the replica serialises it; with its exact length
        # announced, a download cut off midway (a replica lost) is detectable
        return StreamingResponse(stream, media_type="application/octet-stream",
                                 headers={"Content-Disposition": f'attachment; filename="weights.{out_format}"',
                                          "Content-Length": str(size)})

    @app.get("/v1/models", response_model=ModelsResponse)
    async def models_http(self) -> ModelsResponse:
        _metrics().requests.inc(tags={"route": "models"})
        return await self._call(self.server.models_info.remote(), 30)

    @app.get("/healthz", response_model=Health, response_model_exclude_defaults=True,
             responses={503: {"model": Health}})
    async def healthz(self) -> Health | JSONResponse:
        """200 once a PudNetServer replica answers; 503 "starting" (never a hang) while none does."""
        starting = BadInput(503, "starting", "no PudNetServer replica answered within 2 s; checkpoints may still "
                                             "be loading")
        try:
            info = await self._call(self.server.models_info.remote(), 2, on_timeout=starting)
        except BadInput as e:
            detail = f"{e.kind}: {e.message}"
            return JSONResponse(Health(status="starting", architectures=[], detail=detail).model_dump(),
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return Health(status="ok", architectures=[m.arch for m in info.models])


def build_app(args: ServeArgs) -> Application:
    """The application: ``serve run serve_app/config.yaml`` calls it with the file's ``args``. Checkpoint paths
    are resolved here (a run directory to its newest checkpoint), so a wrong one fails the deploy at once with
    one line naming the architecture and the path, instead of after three replica start attempts."""
    resolved = {arch: _resolved(arch, uri) for arch, uri in args.checkpoints.items()}
    args = args.model_copy(update={"checkpoints": resolved})
    server = PudNetServer.options(ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
                                  user_config={"checkpoints": args.checkpoints}).bind(args)
    return PudNetGateway.bind(server, args)


def _resolved(arch: str, uri: str) -> str:
    try:
        return resolve(uri)
    except ValueError as e:
        raise ValueError(f"checkpoints[{arch!r}]: {e}") from None
