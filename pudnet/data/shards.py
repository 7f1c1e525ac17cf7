"""The project's one on-disk dataset format: class-partitioned Parquet shards plus a manifest.

A shard directory (local path or any URI pyarrow opens: s3://, gs://, a shared mount) holds::

    manifest.json                          # the commit point, written last; readers trust nothing else
    parts-<id>/c<label>/<split>-<first>.parquet

Every file holds images of one class and one split (``train``: what support and query sets may
use; ``test``: images kept for reporting), so reading a few classes touches only their files, and
row groups of about 1 MiB let a reader fetch a window of a class without the rest. Columns:
``image`` (fixed-size binary, R*R*3 uint8, already resized by ``pudnet.data.sources.to_rgb_array``),
``label`` (index into the manifest's classes), ``class_name``, ``split``, ``index`` (position in
the source's listing of the class), ``key`` (where the image came from). Pure pyarrow/numpy: no Ray here.
"""
from __future__ import annotations

import json
import uuid
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pudnet.files import absolute, filesystem, join
from .tasks import ClassBank

FORMAT, MANIFEST, SPLITS = "pudnet-shards-1", "manifest.json", ("train", "test")
ROW_GROUP_BYTES = 1 << 20


def pick_test_images(class_name: str, n: int, fraction: float, seed: int) -> np.ndarray:
    """(n,) bool, exactly round(fraction * n) True: which images of a class are test images.

    Seeded per class (not by the order classes are visited), so any subset of classes gets the same split.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"test fraction {fraction}: expected 0 <= fraction < 1")
    mask = np.zeros(n, bool)
    mask[np.random.default_rng([seed, zlib.crc32(class_name.encode())]).permutation(n)[:round(fraction * n)]] = True
    return mask


def row_group_rows(image_size: int) -> int:
    """Rows per row group: about ROW_GROUP_BYTES of pixels, at least 8 images."""
    return max(8, ROW_GROUP_BYTES // (3 * image_size * image_size))


def shard_table(images: np.ndarray, label: int, class_name: str, split: str, indices: Sequence[int],
                keys: Sequence[str]) -> pa.Table:
    """One file's rows: (n, R, R, 3) uint8 images of one class and split, with their source positions and keys."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or not len(keys) == len(indices) == len(
            images):
        raise ValueError(f"images must be (n, R, R, 3) uint8 with one key and index each, got {images.shape} "
                         f"{images.dtype}, {len(keys)} keys, {len(indices)} indices")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    n, width = len(images), images[0].size
    pixels = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(
        np.ascontiguousarray(images).reshape(-1))])
    return pa.table({"image": pixels, "label": pa.array(np.full(n, label, np.int32)),
                     "class_name": pa.array([class_name] * n), "split": pa.array([split] * n),
                     "index": pa.array(np.asarray(indices, np.int32)), "key": pa.array(list(keys))},
                    metadata={"pudnet_format": FORMAT, "image_shape": json.dumps(list(images.shape[1:]))})


def write_table(root: str, relpath: str, table: pa.Table) -> dict:
    """Write one shard file; returns its manifest entry."""
    fs, base = filesystem(root)
    path = join(base, relpath)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    size = int(json.loads(table.schema.metadata[b"image_shape"])[0])
    with fs.open_output_stream(path) as f:
        pq.write_table(table, f, row_group_size=row_group_rows(size), compression="zstd")
    return {"path": relpath, "label": int(table["label"][0].as_py()), "split": table["split"][0].as_py(),
            "rows": table.num_rows}


def shard_path(parts: str, label: int, split: str, first: int) -> str:
    return f"{parts}/c{label:05d}/{split}-{first:08d}.parquet"


@dataclass
class Manifest:
    """What a shard directory holds; ``files`` entries: path (relative), label, split, rows."""

    source: str
    image_size: int
    classes: list[str]
    files: list[dict]
    fingerprint: dict                       # what produced the shards: a re-run with the same one is a no-op
    skipped: list[str] = field(default_factory=list)   # unreadable inputs, by key
    format: str = FORMAT

    def counts(self) -> dict[str, dict[str, int]]:
        """{class name: {split: images}}."""
        out = {name: dict.fromkeys(SPLITS, 0) for name in self.classes}
        for f in self.files:
            out[self.classes[f["label"]]][f["split"]] += f["rows"]
        return out


def read_manifest(root: str) -> Manifest | None:
    """The manifest of the shard directory ``root``, None if it has none."""
    fs, base = filesystem(root)
    if fs.get_file_info(join(base, MANIFEST)).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(join(base, MANIFEST)) as f:
        data = json.loads(f.read())
    if data.get("format") != FORMAT:
        raise ValueError(f"{root}: manifest format {data.get('format')!r}, expected {FORMAT}; re-run prepare_data")
    return Manifest(**data)


def new_parts_dir() -> str:
    return f"parts-{uuid.uuid4().hex[:12]}"


def commit(root: str, manifest: Manifest) -> Manifest:
    """Publish ``manifest`` (atomic move), then delete the parts of the manifest it replaces.

    If another writer committed the same fingerprint meanwhile, keep theirs and drop ours.
    """
    fs, base = filesystem(root)
    previous = read_manifest(root)
    ours = {f["path"].split("/", 1)[0] for f in manifest.files}
    if previous is not None and previous.fingerprint == manifest.fingerprint:
        for parts in ours:
            fs.delete_dir(join(base, parts))
        return previous
    tmp = join(base, f".{MANIFEST}.{uuid.uuid4().hex[:8]}")
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(asdict(manifest), indent=0).encode())
    fs.move(tmp, join(base, MANIFEST))
    replaced = {f["path"].split("/", 1)[0] for f in previous.files} if previous is not None else set()
    for parts in replaced - ours:
        fs.delete_dir(join(base, parts))
    return manifest


def up_to_date(root: str, fingerprint: dict, overwrite: bool) -> Manifest | None:
    """The manifest at ``root`` if made with ``fingerprint``; None if absent or to be overwritten."""
    existing = read_manifest(root)
    if existing is None or existing.fingerprint == fingerprint:
        return existing
    if not overwrite:
        raise ValueError(f"{root} holds shards made with {existing.fingerprint}, not {fingerprint}: "
                         "overwrite them (--overwrite) or choose another output")
    return None


def bank_fingerprint(fingerprint: dict, test_fraction: float, seed: int) -> dict:
    """What :func:`write_bank` records: the caller's fingerprint plus how test images were picked."""
    return {**fingerprint, "test_fraction": test_fraction, "seed": seed}


def write_bank(bank: ClassBank, root: str, source: str, fingerprint: dict, test_fraction: float = 0.2,
               seed: int = 0, overwrite: bool = False) -> Manifest:
    """Write an in-memory bank as shards, each class's test images chosen by :func:`pick_test_images`.

    A re-run with the same fingerprint returns the existing manifest untouched.
    """
    fingerprint = bank_fingerprint(fingerprint, test_fraction, seed)
    existing = up_to_date(root, fingerprint, overwrite)
    if existing is not None:
        return existing
    parts, files = new_parts_dir(), []
    for label, (name, rows) in enumerate(zip(bank.class_names, bank.indices_by_class())):
        is_test = pick_test_images(name, len(rows), test_fraction, seed)
        for split, chosen in (("train", np.flatnonzero(~is_test)), ("test", np.flatnonzero(is_test))):
            if len(chosen):
                keys = [f"{name}#{i}" for i in chosen]
                table = shard_table(bank.images[rows[chosen]], label, name, split, chosen, keys)
                files.append(write_table(root, shard_path(parts, label, split, 0), table))
    return commit(root, Manifest(source, bank.image_size, list(bank.class_names), files, fingerprint))


class Block(NamedTuple):
    """One row group of one shard file: the unit a reader fetches."""

    path: str          # absolute path or URI of the file
    row_group: int
    rows: int


class Catalog:
    """The classes of one or more shard directories and where each class's images lie."""

    def __init__(self, roots: str | Sequence[str]):
        self.roots = [absolute(r) for r in ([roots] if isinstance(roots, str) else roots)]
        self.manifests, self.files = [], {}
        for root in self.roots:
            manifest = read_manifest(root)
            if manifest is None:
                raise FileNotFoundError(f"no {MANIFEST} in {root}: prepare it with jobs/prepare_data.py")
            self.manifests.append(manifest)
            for f in sorted(manifest.files, key=lambda f: (f["label"], f["split"], f["path"])):
                self.files.setdefault((manifest.classes[f["label"]], f["split"]), []).append((join(root, f["path"]),
                                                                                             f["rows"]))
        self.class_names = tuple(name for m in self.manifests for name in m.classes)
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class names collide across shard directories {self.roots}")
        sizes = {m.image_size for m in self.manifests}
        if len(sizes) != 1:
            raise ValueError(f"shard directories {self.roots} mix image sizes {sorted(sizes)}")
        self.image_size = sizes.pop()

    def count(self, name: str, split: str) -> int:
        return sum(rows for _, rows in self.files.get((name, split), ()))

    def blocks(self, name: str, split: str) -> list[Block]:
        per_group = row_group_rows(self.image_size)
        return [Block(path, g, min(per_group, rows - g * per_group))
                for path, rows in self.files.get((name, split), ()) for g in range(-(-rows // per_group))]

    def check(self, classes: Sequence[str]) -> None:
        unknown = sorted(set(classes) - set(self.class_names))
        if unknown:
            raise ValueError(f"classes {unknown[:5]} (of {len(unknown)}) are not in the shards at {self.roots}")


def images_of(table: pa.Table, image_size: int) -> np.ndarray:
    """The ``image`` column as (n, R, R, 3) uint8 (one copy at most)."""
    width = 3 * image_size * image_size
    chunks = [np.frombuffer(c.buffers()[1], np.uint8, len(c) * width, c.offset * width)
              for c in table.column("image").chunks if len(c)] or [np.zeros(0, np.uint8)]
    return (np.concatenate(chunks) if len(chunks) > 1 else chunks[0]).reshape(-1, image_size, image_size, 3)


class BlockReader:
    """Reads blocks of images, keeping the most recent ``cache_bytes`` of them in memory."""

    def __init__(self, image_size: int, cache_bytes: int = 512 << 20):
        self.image_size, self.cache_bytes = image_size, cache_bytes
        self.cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.cached = 0

    def read(self, block: Block) -> np.ndarray:
        key = (block.path, block.row_group)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        fs, path = filesystem(block.path)
        with fs.open_input_file(path) as f:
            images = images_of(pq.ParquetFile(f).read_row_group(block.row_group, columns=["image"]), self.image_size)
        self.cache[key], self.cached = images, self.cached + images.nbytes
        while self.cached > self.cache_bytes and len(self.cache) > 1:
            self.cached -= self.cache.popitem(last=False)[1].nbytes
        return images


def _read_file(path: str, image_size: int, limit: int) -> np.ndarray:
    fs, inner = filesystem(path)
    with fs.open_input_file(inner) as f:
        table = pq.read_table(f, columns=["image"])
    return images_of(table.slice(0, limit), image_size)


def read_class_bank(path_or_uri: str | Sequence[str], classes: Sequence[str] | None = None,
                    split: str | None = None, max_per_class: int | None = None) -> ClassBank:
    """The images of ``classes`` (default: all, in manifest order) as one bank, labels in that order.

    ``split`` picks ``"train"`` or ``"test"`` images (default both, train first); ``max_per_class``
    caps the images read per class and split. Several shard directories may be given.
    """
    catalog = Catalog(path_or_uri)
    names = list(catalog.class_names if classes is None else classes)
    catalog.check(names)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS} or None")
    limit = max_per_class or np.iinfo(np.int64).max
    jobs = []  # (label, path, rows to read)
    for label, name in enumerate(names):
        for part in [split] if split else SPLITS:
            left = limit
            for path, rows in catalog.files.get((name, part), ()):
                if left > 0:
                    jobs.append((label, path, min(rows, left)))
                    left -= rows
    with ThreadPoolExecutor(8) as pool:   # shard files are small and often remote: read them concurrently
        arrays = list(pool.map(lambda job: _read_file(job[1], catalog.image_size, job[2]), jobs))
    empty = np.zeros((0, catalog.image_size, catalog.image_size, 3), np.uint8)
    labels = [np.full(len(a), job[0], np.int64) for a, job in zip(arrays, jobs)]
    return ClassBank(np.concatenate(arrays or [empty]), np.concatenate(labels or [np.zeros(0, np.int64)]), tuple(names))

