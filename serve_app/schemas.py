"""The HTTP contract: typed application arguments, request/response models and the OpenAPI extras."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pudnet.model.config import ARCHITECTURES

from .paths import DatasetPath

Arch = Literal[ARCHITECTURES]
OutFormat = Literal["safetensors", "pt", "pt2"]
WeightsDtype = Literal["float32", "float16", "bfloat16"]
Checkpoints = dict[Arch, str]


class ServeArgs(BaseModel):
    """``build_app``'s arguments, the ``args:`` of serve_app/config.yaml. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    checkpoints: Checkpoints = Field(min_length=1, description="architecture -> PudNet checkpoint: local path, "
                                     "or (Ray Train) checkpoint directory/URI holding model.safetensors")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica (torch uses as many threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica; > 0 runs PudNet on the replica's GPU")
    max_upload_bytes: int = Field(64 << 20, gt=0, description="larger uploads get 413 before they are read")
    max_extracted_bytes: int = Field(512 << 20, gt=0, description="largest inflated archive")
    max_images: int = Field(5000, gt=0, description="most images per dataset")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="largest image (width x height, from its header)")
    max_total_pixels: int = Field(300_000_000, gt=0, description="decoded pixels per request, counted from the "
                                  "image headers before any is decoded")
    max_request_seconds: float = Field(120, gt=0, description="server time per request; past it: 504")
    allowed_roots: list[str] = Field([], description="directories/URI prefixes that JSON {path} requests may "
                                     "read; empty refuses them all")


class HotSwap(BaseModel):
    """The deployment's ``user_config``: a changed URI is loaded on the running replicas, in place."""

    model_config = ConfigDict(extra="forbid")
    checkpoints: Checkpoints = Field(min_length=1)


class ErrorBody(BaseModel):
    error: str = Field(description="stable kind, e.g. upload_too_large (the errors metric's tag)")
    detail: str = Field(description="what is wrong with the request and how to fix it")


class ModelInfo(BaseModel):
    arch: str
    checkpoint_uri: str
    checkpoint_id: str
    max_classes: int
    image_size: int
    target_kwargs: dict
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    replica: str = Field(description="the Serve replica that answered")


class Health(BaseModel):
    status: Literal["ok", "starting"]
    architectures: list[str]
    detail: str = ""


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_TYPES = ("application/zip", "application/x-tar", "application/gzip", "application/x-npz",
                 "application/octet-stream")
PREDICT_BODY = {"requestBody": {"required": True, "description": "the labelled dataset; binary formats are "
                                "recognised by content, JSON names a dataset path", "content": {
    **{kind: _BINARY for kind in _UPLOAD_TYPES}, "application/json": {"schema": DatasetPath.model_json_schema()}}}}
PREDICT_RESPONSES = {200: {"description": "the target's state_dict as safetensors (or a torch .pt file), or "
                                          "format=pt2: a torch.export program of the target with those weights",
                           "content": {"application/octet-stream": _BINARY}},
                     **{code: {"model": ErrorBody} for code in (400, 403, 404, 413, 415, 422, 503, 504)}}
