"""The streamed safetensors response: byte for byte what ``safetensors.torch.save`` writes for the cast tensors,
in chunks, with its size known before the first byte is produced."""
import pytest
import torch
from safetensors.torch import load, save

from pudnet.model import targets
from serve_app.streaming import SafetensorsStream


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_stream_is_the_safetensors_file_of_the_cast_tensors(dtype):
    torch.manual_seed(0)
    state = targets.build("convnet", 3, depth=2, width=8).state_dict()
    stream = SafetensorsStream(state, {"dtype": str(dtype)}, dtype, chunk_bytes=512)
    chunks = list(stream)
    data = b"".join(chunks)
    assert len(data) == len(stream)
    assert len(chunks) > 2 and all(len(c) < 512 + max(t.numel() * 4 for t in state.values()) for c in chunks)
    expected = {k: v.to(stream.dtypes[k]) for k, v in state.items()}
    assert data == save(expected, {"dtype": str(dtype)})
    loaded = load(data)
    assert {k: v.dtype for k, v in loaded.items()} == {k: v.dtype for k, v in expected.items()}
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_batchnorm_statistics_and_integers_keep_their_dtype():
    state = targets.build("convnet", 3, depth=2, width=8).state_dict()
    dtypes = SafetensorsStream(state, {}, torch.float16).dtypes
    assert {dtypes[k] for k in state if k.endswith(("running_mean", "running_var"))} == {torch.float32}
    assert {dtypes[k] for k in state if k.endswith("num_batches_tracked")} == {torch.int64}
    assert {dtypes[k] for k in state if k.endswith(("weight", "bias"))} == {torch.float16}
