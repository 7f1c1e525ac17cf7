"""Parsing and path checks of the Serve app, without a cluster: each bad input is refused with its status,
kind and a message, before the expensive step it guards."""
import io
import json
import os
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from archives import tar_gz_of, zip_of
from pudnet.data.sources import to_rgb_array
from serve_app.budget import BadInput, Budget, decode_budgeted, inside
from serve_app.checkpoints import CheckpointError, newest_checkpoint
from serve_app.inputs import member_parts, read_upload
from serve_app.npz import check_image_layout
from serve_app.paths import DatasetPath, load_path, walk

SIZE = 8


def budget(image_pixels=10_000, total_pixels=100_000, seconds=60.0) -> Budget:
    return Budget(image_pixels, total_pixels, seconds)


def png(shape=(12, 10), seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (1-bit grey) and whose data is one empty row: PIL sizes it
    from the header alone, which is all the budget may look at."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def npz_of(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(body: bytes, b: Budget | None = None, max_images: int = 50):
    return read_upload(body, SIZE, max_images, 4 << 20, b or budget())


def refused(call, status: int, kind: str, *words: str) -> str:
    with pytest.raises(BadInput) as info:
        call()
    assert (info.value.status, info.value.kind) == (status, kind), info.value.message
    assert all(w in info.value.message for w in words), info.value.message
    return info.value.message


def test_valid_zip_decodes_to_sorted_classes():
    bank = upload(zip_of({"b/1.png": png(seed=1), "a/1.png": png(), "a/2.png": png(seed=2)}))
    assert bank.class_names == ("a", "b") and bank.images.shape == (3, SIZE, SIZE, 3)
    assert sorted(bank.labels.tolist()) == [0, 0, 1]


@pytest.mark.parametrize("name", ["/etc/x.png", "a/../../x.png", "../a/x.png", "a\\..\\x.png", "C:/a/x.png"])
def test_unsafe_member_names_are_refused(name):
    refused(lambda: member_parts(name), 400, "unsafe_member_name", repr(name))
    refused(lambda: upload(zip_of({name: png(), "b/1.png": png()})), 400, "unsafe_member_name")


def test_tar_with_parent_member_is_refused():
    refused(lambda: upload(tar_gz_of({"a/1.png": png(), "../../b/1.png": png()})), 400, "unsafe_member_name")


def test_zip_member_name_not_utf8_despite_its_flag():
    body = zip_of({"a/\u00e9.png": png(), "b/1.png": png()}).replace("\u00e9".encode(), b"\xff\xfe")
    refused(lambda: upload(body), 400, "bad_member_name", "UTF-8")


def test_duplicate_member_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning):
        for name in ("a/1.png", "a/1.png", "b/1.png"):
            archive.writestr(name, png())
    refused(lambda: upload(buffer.getvalue()), 400, "duplicate_member", "a/1.png")


def test_per_image_pixels_read_from_the_header_before_decoding():
    start = time.perf_counter()
    body = zip_of({f"a/{i}.png": png_header(9000, 9000) for i in range(100)} | {"b/1.png": png()})
    refused(lambda: upload(body, max_images=200), 413, "image_too_large", "9000x9000", "10000 pixels per image")
    assert time.perf_counter() - start < 5  # decoding the 100 images would take about 45 s


def test_total_pixels_budget():
    body = zip_of({f"a/{i}.png": png((90, 90), seed=i) for i in range(20)} | {"b/1.png": png()})
    refused(lambda: upload(body), 413, "pixel_budget_exceeded", "100000 pixels")


def test_png_over_pils_own_limit_says_so():
    refused(lambda: upload(zip_of({"a/big.png": png_header(30000, 30000), "b/1.png": png()})), 413,
            "image_too_large", "a/big.png", "pixels")


def test_deadline_and_cancel_stop_between_images():
    late = Budget(10_000, 100_000, 1.0, deadline=time.monotonic() - 1)
    refused(lambda: decode_budgeted([("a", "a/1.png", png())], SIZE, late), 504, "server_time_exceeded", "1 s")
    cancelled = budget()
    cancelled.cancelled.set()
    refused(lambda: decode_budgeted([("a", "a/1.png", png())], SIZE, cancelled), 499, "cancelled")


def npy_header_only(shape) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


def test_absurd_npy_header_is_refused_unallocated():
    body = zip_of({"images.npy": npy_header_only((60000, 10000, 10000, 1)),
                   "labels.npy": _npy(np.array([0, 1]))})
    refused(lambda: upload(body, budget(10**12, 10**13), max_images=10**6), 400, "invalid_npz",
            "(60000, 10000, 10000, 1)")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(4, 3, 32, 4), (4, 1, 8, 3), (4, 8, 8, 2), (4, 8), (0, 8, 8)])
def test_non_hwc_layouts_are_refused(shape):
    refused(lambda: check_image_layout(shape, 50, budget()), 400, "invalid_npz", str(shape))


def test_npz_at_the_model_size_is_taken_as_sent_and_matches_the_decoder():
    """The fast path for (N, R, R, 3) uint8 skips decoding; it gives what to_rgb_array would have."""
    images = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    bank = upload(npz_of(images=images, labels=np.arange(6) % 2))
    assert np.array_equal(bank.images, images)
    assert all(np.array_equal(to_rgb_array(Image.fromarray(i), SIZE), i) for i in images)


def test_channels_first_npz_names_the_fix():
    body = npz_of(images=np.zeros((4, 3, 32, 4), np.uint8), labels=np.array([0, 1, 0, 1]))
    refused(lambda: upload(body), 400, "invalid_npz", "channels-first", "transpose(0, 2, 3, 1)")


def test_npz_pixel_budget_from_the_header():
    body = npz_of(images=np.zeros((20, 80, 80), np.uint8), labels=np.arange(20) % 2)
    refused(lambda: upload(body), 413, "pixel_budget_exceeded")


def test_duplicate_class_names():
    body = npz_of(images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 0, 1]),
                  class_names=np.array(["cat", "cat"]))
    refused(lambda: upload(body), 400, "duplicate_class_names", "cat")


def test_valid_npz():
    bank = upload(npz_of(images=np.zeros((4, 9, 9, 3), np.uint8), labels=np.array([0, 1, 0, 1]),
                         class_names=np.array(["x", "y"])))
    assert bank.class_names == ("x", "y") and bank.images.shape == (4, SIZE, SIZE, 3)


@pytest.fixture
def tree(tmp_path):
    """root/ok/{a,b} with images, an outside folder, and links from inside root to outside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for c in ("a", "b"):
        (root / "ok" / c).mkdir(parents=True)
        (root / "ok" / c / "1.png").write_bytes(png())
    (outside / "c").mkdir(parents=True)
    (outside / "c" / "1.png").write_bytes(png())
    (outside / "secret.png").write_bytes(png())
    return root, outside


def request(path) -> DatasetPath:
    return DatasetPath(path=str(path))


def test_folder_inside_the_root_loads(tree):
    root, _ = tree
    bank = load_path(request(root / "ok"), SIZE, 50, [str(root)], budget())
    assert bank.class_names == ("a", "b")


def test_class_folder_linked_outside_the_root(tree):
    root, outside = tree
    os.symlink(outside / "c", root / "ok" / "c")
    refused(lambda: load_path(request(root / "ok"), SIZE, 50, [str(root)], budget()), 403, "path_not_allowed",
            "ok/c")


def test_file_linked_outside_the_root(tree):
    root, outside = tree
    os.symlink(outside / "secret.png", root / "ok" / "a" / "2.png")
    message = refused(lambda: load_path(request(root / "ok"), SIZE, 50, [str(root)], budget()), 403,
                      "path_not_allowed", "a/2.png")
    assert "secret" not in message  # where the link leads is not told


def test_root_itself_a_link_outside(tree):
    root, outside = tree
    os.symlink(outside, root / "out")
    refused(lambda: load_path(request(root / "out"), SIZE, 50, [str(root)], budget()), 403, "path_not_allowed")


def test_link_loop_is_read_once(tree):
    root, _ = tree
    os.symlink(root / "ok", root / "ok" / "a" / "loop")
    files = walk(str(root / "ok"), "ok", [str(root)], limit=50)
    assert [name for name, _ in files] == ["a/1.png", "b/1.png"]


def test_inside_compares_whole_components(tmp_path):
    assert inside(str(tmp_path / "root" / "x"), [str(tmp_path / "root")])
    assert not inside(str(tmp_path / "rootless" / "x"), [str(tmp_path / "root")])


def test_newest_checkpoint_by_step(tmp_path):
    for name, step in [("checkpoint_000009", 900), ("checkpoint_000010", 1000), ("checkpoint_000002", 200)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x")
        (tmp_path / name / "state.json").write_text(json.dumps({"step": step}))
    (tmp_path / "checkpoint_000011").mkdir()  # being written: no weights yet
    assert newest_checkpoint(tmp_path).name == "checkpoint_000010"
    assert newest_checkpoint(tmp_path / "checkpoint_000002").name == "checkpoint_000002"
    with pytest.raises(CheckpointError, match="runs/missing"):
        newest_checkpoint("runs/missing")


def test_missing_checkpoint_fails_the_build_in_one_line(tmp_path):
    from serve_app.app import build_app
    from serve_app.schemas import ServeArgs
    with pytest.raises(ValueError) as info:
        build_app(ServeArgs(checkpoints={"resnet18": str(tmp_path / "runs" / "pudnet-resnet18")}))
    message = str(info.value)
    assert "\n" not in message and "checkpoints['resnet18']" in message and "pudnet-resnet18" in message


def test_serve_job_reads_the_architecture_from_each_run(tmp_path):
    import torch

    from jobs.serve import checkpoints_of, main
    from pudnet import PudNet, PudNetConfig
    from pudnet.model import checkpoint
    for step, arch, kwargs in [(10, "convnet", {"depth": 2, "width": 8}), (20, "convnet", {"depth": 2, "width": 8}),
                               (5, "resnet18", {})]:
        torch.manual_seed(step)
        directory = tmp_path / f"run-{arch}" / f"checkpoint_{step:06d}"
        checkpoint.save(directory, PudNet(PudNetConfig(arch=arch, target_kwargs=kwargs, encoder_width=8, hidden=16,
                                                       layer_embedding=8, max_classes=3, lowrank=2)))
        (directory / "state.json").write_text(json.dumps({"step": step}))
    chosen = checkpoints_of([str(tmp_path / "run-convnet"), str(tmp_path / "run-resnet18")])
    assert chosen == {"convnet": str(tmp_path / "run-convnet" / "checkpoint_000020"),
                      "resnet18": str(tmp_path / "run-resnet18" / "checkpoint_000005")}
    with pytest.raises(ValueError, match="both generate 'convnet'"):
        checkpoints_of([str(tmp_path / "run-convnet"), str(tmp_path / "run-convnet" / "checkpoint_000010")])
    assert main([str(tmp_path / "missing")]) == 2  # one line on stderr, before any cluster starts
