"""A safetensors response written as it is sent: the header first (it needs only names, shapes and dtypes), then
each tensor's bytes, cast as they are written. The file is never built whole in memory (``safetensors.torch.save``
builds it once beside the state dict, and the cast copy was a third), and its exact size is known up front, so
the HTTP response carries a Content-Length and a client can tell a cut-off download from a complete one.

Layout (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length, the JSON
header padded with spaces to a multiple of 8 bytes, then the tensors back to back, little-endian.
"""
from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator

import torch

_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
CHUNK_BYTES = 4 << 20   # small tensors are sent together; each chunk is one message between Serve's actors


def cast_dtype(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """Floating weights travel in ``dtype``, BatchNorm running statistics stay float32: a variance in float16
    loses the precision that eval-mode normalisation divides by. Integer buffers keep their dtype."""
    if tensor.is_floating_point() and not name.endswith(("running_mean", "running_var")):
        return dtype
    return tensor.dtype


class SafetensorsStream:
    """``iter(stream)`` yields the bytes of ``safetensors.torch.save({k: v.to(cast_dtype(k, v, dtype))}, metadata)``
    in chunks of about ``chunk_bytes``; ``len(stream)`` is the file's size in bytes."""

    def __init__(self, state: dict[str, torch.Tensor], metadata: dict[str, str], dtype: torch.dtype,
                 chunk_bytes: int = CHUNK_BYTES):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors stores little-endian tensors; this host is big-endian")
        self.dtypes = {name: cast_dtype(name, t, dtype) for name, t in state.items()}
        # widest dtypes first, as safetensors.torch.save orders them: every tensor starts aligned to its item size
        self.state = dict(sorted(state.items(), key=lambda item: (-self.dtypes[item[0]].itemsize, item[0])))
        self.chunk_bytes = chunk_bytes
        header: dict[str, object] = {"__metadata__": metadata}
        offset = 0
        for name, t in self.state.items():
            end = offset + t.numel() * self.dtypes[name].itemsize
            header[name] = {"dtype": _CODES[self.dtypes[name]], "shape": list(t.shape), "data_offsets": [offset, end]}
            offset = end
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)
        self.header = struct.pack("<Q", len(text)) + text
        self.size = len(self.header) + offset

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        pending, size = [self.header], len(self.header)
        for name, t in self.state.items():
            data = t.detach().to("cpu", self.dtypes[name]).contiguous().reshape(-1).view(torch.uint8).numpy()
            pending.append(data.tobytes())
            size += data.nbytes
            if size >= self.chunk_bytes:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)
