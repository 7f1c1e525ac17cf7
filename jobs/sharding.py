"""The library half of ``jobs/prepare_data.py``: list an image source, decode and write its shards with Ray
Data tasks, and find or write the embedded sources' shards (what ``jobs/train.py`` and ``jobs/evaluate.py``
call before training or evaluating). ``pudnet.data.sources.decode_labelled_images`` is the one decoder.
"""
from __future__ import annotations

import json
import os
from typing import Collection, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray

from jobs.connect import ray_cluster
from pudnet.data.sources import (CACHE_VERSION, SOURCES, SourceUnavailable, decode_labelled_images,
                                 default_cache_dir, installed_packages, load_class_bank, packages_current)
from pudnet.data.images import class_of, hidden
from pudnet.data.shards import (Manifest, bank_fingerprint, commit, new_parts_dir, pick_test_images, read_manifest,
                                shard_path, shard_table, up_to_date, write_bank, write_table)
from pudnet.files import absolute, filesystem, join
from pudnet.files import scheme as scheme_of

BLOCK_ROWS = 1024   # images per Ray Data block (and at most per shard file)


def _list(root: str, recursive: bool = True) -> list[pafs.FileInfo]:
    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
    return sorted((i for i in infos if not hidden(i.path[len(base):].strip("/").split("/"))), key=lambda i: i.path)


def _class_files(root: str) -> dict[str, list[str]]:
    """{class folder name: sorted file paths below it}; ValueError if ``root`` has no class folder."""
    fs, base = filesystem(root)
    top = _list(root, recursive=False)
    classes = {i.base_name: [] for i in top if i.type == pafs.FileType.Directory}
    if not classes:
        raise ValueError(f"{root!r} has no class folders; expected {root}/<class_name>/<image>")
    scheme = scheme_of(root)
    for info in _list(root):
        name = class_of(info.path[len(base):].strip("/").split("/"))
        if info.type == pafs.FileType.File and name in classes:
            classes[name].append(scheme + info.path)
    return classes


def list_folder(root: str, test_fraction: float, seed: int, max_per_class: int | None) -> dict[tuple[str, str], list]:
    """{(class folder, split): file paths}: each class's first ``max_per_class`` files, a seeded share as test."""
    out = {}
    for name, paths in _class_files(root).items():
        paths = paths[:max_per_class]
        is_test = pick_test_images(name, len(paths), test_fraction, seed)
        out[(name, "train")] = [p for p, t in zip(paths, is_test) if not t]
        out[(name, "test")] = [p for p, t in zip(paths, is_test) if t]
    return out


def list_ilsvrc(root: str, val_labels: str | None, max_per_class: int | None) -> dict[tuple[str, str], list]:
    """{(wnid, split): file paths}: ``train/`` as train images, ``val/`` as test images."""
    out = {(wnid, "train"): paths[:max_per_class] for wnid, paths in _class_files(join(root, "train")).items()}
    val_dirs = [i for i in _list(join(root, "val"), recursive=False) if i.type == pafs.FileType.Directory]
    if val_dirs:
        val = _class_files(join(root, "val"))
    else:
        fs, path = filesystem(val_labels or join(root, "LOC_val_solution.csv"))
        with fs.open_input_stream(path) as f:
            rows = [line.replace(",", " ").split() for line in f.read().decode().splitlines()]
        label = {r[0].rsplit(".", 1)[0]: r[1] for r in rows if len(r) > 1 and r[0] != "ImageId"}
        scheme = scheme_of(root)
        val = {}
        for info in _list(join(root, "val"), recursive=False):
            val.setdefault(label.get(info.base_name.rsplit(".", 1)[0], "?"), []).append(scheme + info.path)
        if "?" in val:
            print(f"prepare: {len(val.pop('?'))} val images have no label in {path}; skipped", flush=True)
    unknown = sorted(set(val) - {wnid for wnid, _ in out})
    if unknown:
        raise ValueError(f"val/ has classes absent from train/: {unknown[:5]}")
    out.update({(wnid, "test"): paths for wnid, paths in val.items()})
    return out


def decode_and_write(batch: dict[str, np.ndarray], out: str, parts: str, image_size: int,
                     source: str, classes: list[str]) -> dict[str, np.ndarray]:
    """Decode a batch of listed images and write one shard file per (class, split) in it.

    Returns one row per file written and one per unreadable image (``skipped`` = its path).
    """
    groups, skipped = {}, []
    for path, label, split, index in zip(batch["path"], batch["label"], batch["split"], batch["index"]):
        try:
            fs, inner = filesystem(str(path))
            with fs.open_input_file(inner) as f:
                bank, _ = decode_labelled_images([(classes[label], str(path), f.read())], image_size, source)
        except (OSError, ValueError):   # unreadable file, or decode_labelled_images found no readable image
            skipped.append(str(path))
            continue
        groups.setdefault((int(label), str(split)), []).append((bank.images[0], str(path), int(index)))
    rows = {"file": [], "label": [], "split": [], "rows": [], "skipped": []}
    for (label, split), items in groups.items():
        images, keys, indices = zip(*items)
        table = shard_table(np.stack(images), label, f"{source}/{classes[label]}", split, indices, keys)
        entry = write_table(out, shard_path(parts, label, split, indices[0]), table)
        for key, value in (("file", entry["path"]), ("label", label), ("split", split), ("rows", entry["rows"]),
                           ("skipped", "")):
            rows[key].append(value)
    for path in skipped:
        for key, value in (("file", ""), ("label", -1), ("split", ""), ("rows", 0), ("skipped", path)):
            rows[key].append(value)
    return {k: np.array(v, dtype=object if k in ("file", "split", "skipped") else np.int64) for k, v in rows.items()}


def prepare_listing(listing: dict[tuple[str, str], list], out: str, source: str, image_size: int,
                    fingerprint: dict, overwrite: bool = False) -> Manifest:
    """Decode and write every listed image with Ray Data tasks, then commit the manifest."""
    classes = sorted({name for name, _ in listing})
    fingerprint = {**fingerprint, "image_size": image_size, "images": sum(map(len, listing.values()))}
    existing = up_to_date(out, fingerprint, overwrite)
    if existing is not None:
        print(f"prepare: {out} is up to date ({sum(f['rows'] for f in existing.files)} images)", flush=True)
        return existing
    columns = {"path": [], "label": [], "split": [], "index": []}
    for (name, split), paths in sorted(listing.items()):
        for i, path in enumerate(paths):
            for key, value in zip(columns, (path, classes.index(name), split, i)):
                columns[key].append(value)
    table = pa.table(columns)
    blocks = [table.slice(i, BLOCK_ROWS) for i in range(0, max(len(table), 1), BLOCK_ROWS)]
    parts = new_parts_dir()
    written = ray.data.from_arrow(blocks).map_batches(
        decode_and_write, batch_size=BLOCK_ROWS, batch_format="numpy",
        fn_kwargs=dict(out=out, parts=parts, image_size=image_size, source=source, classes=classes)).take_all()
    files = [{"path": r["file"], "label": int(r["label"]), "split": r["split"], "rows": int(r["rows"])}
             for r in written if r["file"]]
    skipped = sorted(r["skipped"] for r in written if r["skipped"])
    if skipped:
        print(f"prepare: skipped {len(skipped)} unreadable images: {skipped[:20]}", flush=True)
    manifest = commit(out, Manifest(source, image_size, [f"{source}/{c}" for c in classes], files, fingerprint,
                                    skipped))
    counts = manifest.counts()
    print(f"prepare: {out}: {len(counts)} classes, {sum(c['train'] for c in counts.values())} train and "
          f"{sum(c['test'] for c in counts.values())} test images, {len(skipped)} skipped", flush=True)
    return manifest


def default_data_dir() -> str:
    """Where the embedded sources' shards go unless a job names a ``data_dir``."""
    return str(default_cache_dir() / "shards")


def embedded_root(data_dir: str, source: str, image_size: int, max_per_class: int | None) -> str:
    return join(data_dir, f"{source}-{image_size}px-{max_per_class or 'all'}")


def _embedded_fingerprint(source: str, image_size: int, max_per_class: int | None, packages: dict[str, str]) -> dict:
    """What an embedded source's shards are made from: the decoded cache's key and its installed ``packages``."""
    return {"kind": "embedded", "source": source, "image_size": image_size, "max_per_class": max_per_class,
            "cache_version": CACHE_VERSION, "packages": packages}


def _shards_current(manifest: Manifest | None, expected: dict) -> bool:
    """Whether shards with ``manifest`` were made as ``expected`` says, their packages by the decoded cache's
    rule (``packages_current``: with none of the source's packages installed, any shards stay in use)."""
    if manifest is None:
        return False
    made = manifest.fingerprint
    return ({**made, "packages": None} == {**expected, "packages": None}
            and packages_current(made.get("packages"), expected["packages"]))


def _prepare_embedded_batch(batch: dict[str, np.ndarray], image_size: int, max_per_class: int | None,
                            test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    source, root = str(batch["source"][0]), str(batch["root"][0])
    fingerprint = json.loads(str(batch["fingerprint"][0]))   # the driver's: one machine decides what is current
    try:
        bank, _ = load_class_bank([source], image_size, max_per_class)
    except SourceUnavailable as e:
        return {"source": np.array([source]), "status": np.array([f"absent: {e}"])}
    manifest = write_bank(bank, root, source, fingerprint, test_fraction, seed, overwrite=True)
    return {"source": np.array([source]), "status": np.array([f"{len(manifest.classes)} classes"])}


def prepare_embedded(sources: list[str], data_dir: str, image_size: int, max_per_class: int | None,
                     test_fraction: float = 0.2, seed: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """Shard each embedded source (one Ray task each) unless its shards are current: made with this code's
    ``CACHE_VERSION`` from the source's installed packages (``_shards_current``).

    Returns ({source: its shard dir}, {source not installed: why, naming the install command}).
    """
    roots = {s: embedded_root(data_dir, s, image_size, max_per_class) for s in sources}
    todo, missing = [], {}
    for source, root in roots.items():
        fingerprint = _embedded_fingerprint(source, image_size, max_per_class, installed_packages(source))
        if not _shards_current(read_manifest(root), bank_fingerprint(fingerprint, test_fraction, seed)):
            todo.append({"source": source, "root": root, "fingerprint": json.dumps(fingerprint)})
    if todo:
        print(f"prepare: writing shards of {[t['source'] for t in todo]} to {data_dir}", flush=True)
        with ray_cluster():   # the caller's cluster, else a local one stopped when the shards are written
            results = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
                _prepare_embedded_batch, batch_size=1,
                fn_kwargs=dict(image_size=image_size, max_per_class=max_per_class, test_fraction=test_fraction,
                               seed=seed)).take_all()
        for r in results:
            print(f"prepare: {r['source']}: {r['status']}", flush=True)
            if r["status"].startswith("absent"):
                roots.pop(r["source"])
                missing[r["source"]] = r["status"].removeprefix("absent: ")
    return roots, missing


def source_root(source: str, data_dir: str, image_size: int, max_per_class: int | None) -> str:
    """The shard directory a job's source name means: an embedded source's folder in data_dir, else the name
    itself as a shard directory (a URI, an absolute path, or a folder of data_dir)."""
    if source in SOURCES:
        return embedded_root(data_dir, source, image_size, max_per_class)
    return absolute(source if "://" in source or os.path.isabs(source) else join(data_dir, source))


def prepare_sources(sources: Sequence[str], data_dir: str, image_size: int, max_per_class: int | None,
                    test_fraction: float = 0.2, optional: Collection[str] = ()) -> dict[str, str]:
    """{source: its shard directory (``source_root``)}, embedded sources written on first use, in order.

    An embedded source that is not installed is left out, with a message, if it is in ``optional`` (training's
    default sources); any other raises ValueError naming it and its install command.
    """
    prepared, missing = prepare_embedded([s for s in sources if s in SOURCES], data_dir, image_size, max_per_class,
                                         test_fraction)
    required = {s: why for s, why in missing.items() if s not in optional}
    if required:
        raise ValueError(f"sources {sorted(required)} are not installed: " + "; ".join(
            f"{s}: {why}" for s, why in required.items()) + " (README: Data; or leave them out of `sources`)")
    if missing:
        print(f"sources: not installed, left out: {sorted(missing)} (bash scripts/setup.sh installs them)",
              flush=True)
    return {s: source_root(s, data_dir, image_size, max_per_class) for s in sources
            if s in prepared or s not in SOURCES}
